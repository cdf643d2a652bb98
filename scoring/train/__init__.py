"""Stage 4, train: the models the scores compare against -- the SFT reference and the DPO warm-ups."""
