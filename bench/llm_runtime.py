"""Compare llama.cpp runtimes on the local LLM: load time, TTFT, tokens/s and memory.

    python -m bench.llm_runtime                       # xllamacpp, as the app runs it
    /other/venv/bin/python -m bench.llm_runtime --runtime llama-cpp-python --gguf PATH

Each run loads SmolLM2-135M-Instruct with the app's settings (2048-token
context, 1 decode thread, 2 batch threads), answers the same short question
``--runs`` times at temperature 0 and prints one JSON object: load seconds,
the first (cold) request's time to first token, the median and p95 warm TTFT,
decode tokens/s, the CPU features the build reports, and the process RSS
before and after loading. Only the standard library and the runtime itself are
imported, so the script runs in a bare virtualenv holding just the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

MESSAGES = [
    {
        "role": "system",
        "content": "You are Voice Lab, a friendly voice assistant. Answer in one short sentence.",
    },
    {"role": "user", "content": "What is the capital of France?"},
]
MAX_TOKENS = 24


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _xllamacpp(gguf: str):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_ctx = 2048
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 2
    params.verbosity = -1
    params.warmup = False
    params.cache_ram_mib = 0
    server = xllamacpp.Server(params)

    def ask(on_token) -> None:
        def on_chunk(chunk):
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    on_token()
            return False

        request = {"messages": MESSAGES, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0}
        server.handle_chat_completions(request, on_chunk)

    return ask, xllamacpp.get_system_info()


def _llama_cpp_python(gguf: str):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=gguf, n_ctx=2048, n_threads=1, n_threads_batch=2, verbose=False
    )

    def ask(on_token) -> None:
        stream = llm.create_chat_completion(
            messages=MESSAGES, stream=True, max_tokens=MAX_TOKENS, temperature=0
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):
                on_token()

    return ask, llama_cpp.llama_print_system_info().decode()


RUNTIMES = {"xllamacpp": _xllamacpp, "llama-cpp-python": _llama_cpp_python}


def measure(runtime: str, gguf: str, runs: int) -> dict:
    before = rss_mb()
    started = time.perf_counter()
    ask, system_info = RUNTIMES[runtime](gguf)
    load = time.perf_counter() - started
    ttfts, rates = [], []
    for _ in range(runs + 1):
        stamps: list[float] = []
        sent = time.perf_counter()
        ask(lambda stamps=stamps: stamps.append(time.perf_counter()))
        ttfts.append(stamps[0] - sent)
        if len(stamps) > 1:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    warm = sorted(ttfts[1:])
    return {
        "runtime": runtime,
        "load_seconds": round(load, 3),
        "ttft_cold_ms": round(ttfts[0] * 1000, 1),
        "ttft_warm_median_ms": round(statistics.median(warm) * 1000, 1),
        "ttft_warm_p95_ms": round(warm[min(len(warm) - 1, int(0.95 * len(warm)))] * 1000, 1),
        "tokens_per_second_median": round(statistics.median(rates[1:] or rates), 1),
        "rss_mb_before": round(before, 1),
        "rss_mb_loaded": round(rss_mb(), 1),
        "cpu_features": " ".join(
            part.strip() for part in system_info.split("|") if part.strip().endswith("= 1")
        ),
        "loadavg": os.getloadavg(),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="xllamacpp")
    parser.add_argument("--gguf", help="the model file (default: the local LLM's, see weights.py)")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    gguf = args.gguf
    if gguf is None:
        from pipeline.providers.local.models import llm_gguf

        gguf = str(llm_gguf())
    print(json.dumps(measure(args.runtime, gguf, args.runs), indent=1))


if __name__ == "__main__":
    main()
