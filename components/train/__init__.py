"""Training stages: on-policy preference pairs, and TRL trainers (CPT, SFT, DPO, ORPO) with PEFT adapters."""
