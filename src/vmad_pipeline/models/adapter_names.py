"""The names peft gives the adapters' weights, importable without peft (an export loads and
predicts without it: docs/vmad.md)."""

AMOE_LORA = "AMOE_LORA"  # AMoE-LoRA's peft type, a plain string (models/amoe_lora/__init__.py)
AMOE_PREFIX = "amoe_"  # every AMoE-LoRA adapter parameter name starts with it
ADAPTER_PREFIXES = ("lora_", AMOE_PREFIX)  # the adapters' own weights (LoRA's, AMoE-LoRA's)
