# A vLLM worker: vLLM's official OpenAI server image with infercdn added, running
# `infercdn worker vllm` (supervises vLLM, restarts it if it dies, drains on SIGTERM and reports
# draining on its control port, which gateways probe through the endpoint's health_url).
#
#   mkdir -p ctx/wheels && pip wheel --no-deps -w ctx/wheels . && cp deploy/docker/vllm.Dockerfile ctx/ \
#     && docker build -f ctx/vllm.Dockerfile -t infercdn-vllm ctx
#   docker run --gpus all -v /srv/models:/models -p 8000:8000 -p 9000:9000 infercdn-vllm \
#     --model /models/Qwen2.5-7B-Instruct --served-model-name qwen2.5-7b -- --gpu-memory-utilization 0.9
#
# Not built in this project's tests (no GPU, no registry); linted with hadolint.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

# infercdn into the interpreter that has vLLM (its dependencies come from the index; vLLM's own
# pins are kept because they already satisfy them).  Recent vLLM images install with uv.
COPY wheels/ /tmp/wheels/
RUN if command -v uv >/dev/null; then uv pip install --system --no-cache /tmp/wheels/infercdn-*.whl; \
    else python3 -m pip install --no-cache-dir /tmp/wheels/infercdn-*.whl; fi \
 && rm -rf /tmp/wheels \
 && groupadd --system --gid 10001 infercdn \
 && useradd --system --uid 10001 --gid infercdn --create-home --home-dir /home/infercdn infercdn \
 && mkdir -p /models /var/cache/infercdn \
 && chown infercdn:infercdn /models /var/cache/infercdn

# model downloads (HF_HOME) and the launcher's work folder: mount volumes here
ENV HF_HOME=/models/huggingface \
    INFERCDN_CACHE=/var/cache/infercdn \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/infercdn
EXPOSE 8000 9000
# the control port's /health: 200 when vLLM is ready, 503 while starting or draining
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["infercdn", "worker", "vllm", "--host", "0.0.0.0", "--port", "8000", \
            "--control-host", "0.0.0.0", "--control-port", "9000"]
CMD ["--help"]
