"""Generation engines, one interface (generate / encode_prompt / sync / stats): hf.py (the training model itself or
a copy), vllm.py (vLLM, in-process), sharded.py (data parallel: each process a share). harness/train/build.py picks
the configured one."""
