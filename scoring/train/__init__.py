"""Stage 4, train: the models the scores compare against -- the SFT reference and the DPO warm-ups.

Laid out as TRL lays out its trainers, a config and a trainer module per method over a shared base:
config.py (the fields every run has) -> sft_config.py / dpo_config.py (each method's defaults);
trainer.py (the Trainer plumbing both share) -> sft.py (the DavIR reference) / dpo.py (the DPO warm-ups, with the
DPO or DavIR-DPO objective); bounded.py (each micro-batch as token-bounded groups, so memory follows the
configuration); sharded.py (FSDP under a launcher, ``DAVIR_FSDP=1``: the model split over the ranks);
influence.py: the first-order influence of a pair on the validation loss at θ.
"""
