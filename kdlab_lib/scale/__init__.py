"""The script path for real models: ``kdlab distill`` on Hugging Face Accelerate
(``accelerate_distill``), the chunked token-level loss that never holds full logits
(``chunked_loss``), the fast path (``fast_kd``: vocabulary padding, compile, fused AdamW) and the
offline top-k logit cache (``logit_cache``). It imports ``core`` only."""
