"""Streaming: text deltas, stop strings, worker threads, asyncio and Ctrl-C in the CLI.

The models are real (a toy GPT and tiny GPT-2 checkpoints written by transformers).
Where a test needs particular tokens (a character split over several byte tokens, a
stop string), a logits processor forces them: the model still runs every step and
only the choice of token is scripted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from genkit.caches.base import CacheCapacityError
from genkit.detokenizer import REPLACEMENT_CHAR
from genkit.engine import Generator
from genkit.errors import ConfigError, GenerationError
from genkit.streaming import AsyncGenerationStream, StreamTimeoutError, ThreadedStream, astream, stream_in_thread
from genkit.testing import tiny_generator

HARD_TEXT = "Ça va? 😀 日本語 e\u0301 👨\u200d👩\u200d👧 done"


class ForceTokens:
    """Logits processor that makes row ``r`` pick ``scripts[r][i]`` as its i-th token (the last one repeats)."""

    def __init__(self, *scripts: list[int]):
        self.scripts = scripts
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, float("-inf"))
        for row, script in enumerate(self.scripts):
            forced[row, script[min(self.step, len(script) - 1)]] = 0.0
        self.step += 1
        return forced


class SlowSteps:
    """Logits processor that sleeps ``seconds`` per step and raises at step ``fail_at`` (when set)."""

    def __init__(self, seconds: float = 0.0, fail_at: int | None = None):
        self.seconds = seconds
        self.fail_at = fail_at
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.step == self.fail_at:
            raise RuntimeError(f"processor failed on purpose at step {self.step}")
        self.step += 1
        time.sleep(self.seconds)
        return scores


@pytest.fixture(scope="module")
def toy():
    return tiny_generator(seed=0, max_positions=128)


@pytest.fixture(scope="module")
def byte_gpt2(tiny_gpt2):
    """Tiny GPT-2 with a byte-level BPE where most tokens are single bytes."""
    return Generator.from_pretrained(tiny_gpt2(tokenizer="bytes").folder)


@pytest.fixture(scope="module")
def real_gpt2(tiny_gpt2):
    """Tiny GPT-2 with the real GPT-2 tokenizer (skips without the shared data folder)."""
    return Generator.from_pretrained(tiny_gpt2(tokenizer="gpt2").folder)


def stream_text(stream) -> dict[int, str]:
    """Join the event texts per sequence."""
    texts: dict[int, str] = {}
    for event in stream:
        texts[event.sequence] = texts.get(event.sequence, "") + event.text
    return texts


# ---------------------------------------------------------------- text deltas


def test_stream_text_equals_decode_gpt2(real_gpt2):
    ids = real_gpt2.tokenizer.encode(HARD_TEXT)
    events = list(real_gpt2.stream("Hi", max_new_tokens=len(ids), logits_processors=[ForceTokens(ids)]))
    assert [e.token_id for e in events] == ids
    assert "".join(e.text for e in events) == HARD_TEXT
    assert not any(REPLACEMENT_CHAR in e.text for e in events)
    assert "" in [e.text for e in events]  # some characters did span tokens


def test_free_running_gpt2_stream_equals_result(real_gpt2):
    stream = real_gpt2.stream(["Hello there", "日本"], max_new_tokens=40, do_sample=True, seed=5, top_k=0)
    texts = stream_text(stream)
    for row, result in enumerate(stream.results):
        assert texts.get(row, "") == result.text
        assert result.text == real_gpt2.tokenizer.decode(result.token_ids)


def test_byte_tokens_stream_whole_characters(byte_gpt2):
    ids = byte_gpt2.tokenizer.encode(HARD_TEXT)
    stream = byte_gpt2.stream("the", max_new_tokens=len(ids), logits_processors=[ForceTokens(ids)])
    events = list(stream)
    assert "".join(e.text for e in events) == HARD_TEXT == stream.result.text
    assert not any(REPLACEMENT_CHAR in e.text for e in events)
    emoji = [e.text for e in events if "😀" in e.text]
    assert emoji == ["😀"]  # four byte tokens, one delta


def test_incomplete_last_character_at_length(byte_gpt2):
    ids = byte_gpt2.tokenizer.encode("ok😀")[:-1]  # stop one byte short of the emoji
    stream = byte_gpt2.stream("the", max_new_tokens=len(ids), logits_processors=[ForceTokens(ids)])
    events = list(stream)
    assert [e.text for e in events] == ["o", "k", "", "", REPLACEMENT_CHAR]
    assert stream.result.text == "ok" + REPLACEMENT_CHAR
    assert stream.result.finish_reason == "length"


# ---------------------------------------------------------------- stop strings


def run_scripted(generator, text: str, **kwargs):
    ids = generator.tokenizer.encode(text)
    stream = generator.stream("the", max_new_tokens=len(ids), logits_processors=[ForceTokens(ids)], **kwargs)
    events = list(stream)
    return events, stream.result


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("Hello STOP there", ["STOP"], "Hello "),  # spans four tokens
        ("ab the rest", ["b t"], "a"),  # the last token, " the", runs on past the match
        ("STAR STOP", ["STOP"], "STAR "),  # "ST" is held back, then released
        ("one, two; three", [";", ","], "one"),  # the earliest match wins
        ("ok 😀 no", ["😀"], "ok "),  # the stop string's bytes span four tokens
        ("no match here", ["zz"], "no match here"),
    ],
)
def test_stop_string_never_streamed(byte_gpt2, text, stops, expected):
    events, result = run_scripted(byte_gpt2, text, stop_strings=stops)
    streamed = "".join(e.text for e in events)
    assert streamed == expected
    assert result.text == expected
    assert result.finish_reason == ("length" if expected == text else "stop")
    for stop in stops:
        assert stop not in streamed


def test_stop_prefix_held_back_until_resolved(byte_gpt2):
    events, _ = run_scripted(byte_gpt2, "xSTAy", stop_strings=["STOP"])
    assert [e.text for e in events] == ["x", "", "", "STA", "y"]


def test_stop_string_kept_when_requested(byte_gpt2):
    events, result = run_scripted(byte_gpt2, "Hello STOP there", stop_strings=["STOP"], include_stop_str_in_output=True)
    assert "".join(e.text for e in events) == "Hello STOP" == result.text


def test_stop_string_gpt2_multi_token(real_gpt2):
    text = " The answer is 42.\n\nQuestion: next"
    events, result = run_scripted(real_gpt2, text, stop_strings=["\n\nQuestion:"])
    assert "".join(e.text for e in events) == " The answer is 42." == result.text
    assert result.finish_reason == "stop"


def test_batch_stream_stop_strings_per_row(byte_gpt2):
    first = byte_gpt2.tokenizer.encode("aaa STOP bbb")
    second = byte_gpt2.tokenizer.encode("cc STcc STOP")
    stream = byte_gpt2.stream(["the", "he he"], max_new_tokens=12, stop_strings=["STOP"],
                              logits_processors=[ForceTokens(first, second)])
    texts = stream_text(stream)
    assert [r.text for r in stream.results] == ["aaa ", "cc STcc "]
    assert texts == {0: "aaa ", 1: "cc STcc "}
    assert [r.finish_reason for r in stream.results] == ["stop", "stop"]


# ---------------------------------------------------------------- worker thread


def test_threaded_stream_matches_stream(toy):
    direct = toy.stream(["to be", "a"], max_new_tokens=12, do_sample=True, seed=3)
    expected = [(e.sequence, e.token_id, e.text) for e in direct]
    threaded = ThreadedStream(toy, ["to be", "a"], max_new_tokens=12, do_sample=True, seed=3, timeout=30)
    assert [(e.sequence, e.token_id, e.text) for e in threaded] == expected
    assert [r.token_ids for r in threaded.results] == [r.token_ids for r in direct.results]
    assert not threaded._worker.thread.is_alive()


def test_stream_in_thread_runs_elsewhere(toy):
    seen = []

    class RecordThread:
        def __call__(self, input_ids, scores):
            seen.append(threading.current_thread().name)
            return scores

    events = list(stream_in_thread(toy, "to be", max_new_tokens=5, logits_processors=[RecordThread()], timeout=30))
    assert len(events) == 5
    assert set(seen) == {"genkit-stream"}


def test_breaking_early_stops_worker(toy):
    stream = ThreadedStream(toy, "to be", max_new_tokens=100, logits_processors=[SlowSteps(0.02)], timeout=30)
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            break
    stream._worker.thread.join(10)
    assert not stream._worker.thread.is_alive()
    [result] = stream.results
    assert result.finish_reason == "cancelled"
    assert 3 <= len(result.token_ids) < 10


def test_cancel_returns_partial_results(toy):
    stream = ThreadedStream(toy, ["to be", "or"], max_new_tokens=100, logits_processors=[SlowSteps(0.02)], timeout=30)
    iterator = iter(stream)
    first = next(iterator)
    assert first.index == 0
    results = stream.cancel()
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    assert all(1 <= len(r.token_ids) < 100 for r in results)
    assert results[0].text == toy.tokenizer.decode(results[0].token_ids)
    assert list(iterator) == []


def test_context_manager_stops_worker(toy):
    with ThreadedStream(toy, "to be", max_new_tokens=100, logits_processors=[SlowSteps(0.02)], timeout=30) as stream:
        next(iter(stream))
    assert not stream._worker.thread.is_alive()
    assert stream.results[0].finish_reason == "cancelled"


def test_worker_error_raised_in_consumer(toy):
    stream = ThreadedStream(toy, "to be", max_new_tokens=20, logits_processors=[SlowSteps(fail_at=5)], timeout=30)
    received = []
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="failed on purpose at step 5") as info:
        for event in stream:
            received.append(event)
    assert time.perf_counter() - started < 20
    assert len(received) == 5
    # The traceback reaches into the worker's frames, where the error happened.
    assert "__call__" in [frame.name for frame in info.traceback]


def test_worker_config_error_raised_in_consumer(toy):
    stream = ThreadedStream(toy, "to be", top_p=1.5, timeout=30)
    with pytest.raises(ConfigError, match="top_p=1.5"):
        list(stream)


def test_full_cache_error_raised_in_consumer(toy):
    # A static cache of 10 positions overflows mid-request: "to be" fills 5, so 5 tokens are fed.
    stream = ThreadedStream(toy, "to be", max_new_tokens=20, cache="static", cache_options={"max_length": 10},
                            timeout=30)
    received = []
    with pytest.raises(CacheCapacityError, match="static KV cache overflow"):
        for event in stream:
            received.append(event)
    assert 1 <= len(received) <= 6
    assert not stream._worker.thread.is_alive()


def test_astream_full_cache_error_raised(toy):
    async def consume():
        async for _ in astream(toy, "to be", max_new_tokens=20, cache="static", cache_options={"max_length": 10},
                               timeout=30):
            pass

    with pytest.raises(CacheCapacityError):
        asyncio.run(consume())


def test_timeout_raises_and_stops_worker(toy):
    stream = ThreadedStream(toy, "to be", max_new_tokens=50, logits_processors=[SlowSteps(0.5)], timeout=0.1)
    with pytest.raises(StreamTimeoutError, match="timeout=0.1"):
        list(stream)
    stream._worker.thread.join(10)
    assert not stream._worker.thread.is_alive()
    assert stream.results[0].finish_reason == "cancelled"


def test_stream_timeout_is_a_timeout_error():
    assert issubclass(StreamTimeoutError, TimeoutError)
    assert issubclass(StreamTimeoutError, GenerationError)


@pytest.mark.parametrize(
    ("timeout", "shown"),
    [(0, "timeout=0 (int)"), (-1.0, "timeout=-1.0 (float)"), ("5", "timeout='5' (str)"), (True, "timeout=True (bool)"),
     (float("nan"), "timeout=nan (float)"), (float("inf"), "timeout=inf (float)"), ([5], "timeout=[5] (list)")],
)
def test_invalid_timeout_rejected(toy, timeout, shown):
    threads_before = threading.active_count()

    with pytest.raises(ConfigError, match=re.escape(shown)) as threaded:
        ThreadedStream(toy, "to be", timeout=timeout)
    with pytest.raises(ConfigError, match=re.escape(shown)):
        stream_in_thread(toy, "to be", timeout=timeout)
    with pytest.raises(ConfigError, match=re.escape(shown)):
        astream(toy, "to be", timeout=timeout)
    with pytest.raises(ConfigError, match=re.escape(shown)):
        AsyncGenerationStream(toy, "to be", timeout=timeout)
    with pytest.raises(ConfigError, match=re.escape(shown)):
        toy.astream("to be", timeout=timeout)

    assert "a finite number of seconds > 0" in str(threaded.value)
    # The check runs before the worker thread starts.
    assert threading.active_count() == threads_before


@pytest.mark.parametrize("timeout", [None, 30, 2.5])
def test_valid_timeout_accepted(toy, timeout):
    stream = ThreadedStream(toy, "to be", max_new_tokens=3, timeout=timeout)

    assert len(list(stream)) == 3
    assert stream.timeout == timeout


# ---------------------------------------------------------------- asyncio


def test_astream_matches_stream(toy):
    expected = [(e.sequence, e.token_id, e.text) for e in toy.stream(["to be", "a"], max_new_tokens=10)]

    async def consume():
        stream = astream(toy, ["to be", "a"], max_new_tokens=10, timeout=30)
        events = [(e.sequence, e.token_id, e.text) async for e in stream]
        return events, stream.results

    events, results = asyncio.run(consume())
    assert events == expected
    assert len(results) == 2


def test_generator_astream_method(toy):
    expected = [e.token_id for e in toy.stream("to be", max_new_tokens=6)]

    async def consume():
        return [e.token_id async for e in toy.astream("to be", max_new_tokens=6, timeout=30)]

    assert asyncio.run(consume()) == expected


def test_astream_leaves_event_loop_free(toy):
    async def consume():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        events = [e async for e in astream(toy, "to be", max_new_tokens=15, logits_processors=[SlowSteps(0.02)])]
        done.set()
        await task
        return events, ticks

    events, ticks = asyncio.run(consume())
    assert len(events) == 15
    assert ticks >= 15  # about 0.3 s of generation at one tick per 5 ms, if the loop never blocked


def test_astream_error_raised(toy):
    async def consume():
        received = []
        async for event in astream(toy, "to be", max_new_tokens=20, logits_processors=[SlowSteps(fail_at=3)],
                                   timeout=30):
            received.append(event)
        return received

    with pytest.raises(RuntimeError, match="failed on purpose at step 3"):
        asyncio.run(consume())


def test_astream_timeout(toy):
    async def consume():
        async for _ in astream(toy, "to be", max_new_tokens=50, logits_processors=[SlowSteps(0.5)], timeout=0.1):
            pass

    with pytest.raises(StreamTimeoutError):
        asyncio.run(consume())


def test_astream_break_stops_worker(toy):
    async def consume():
        stream = AsyncGenerationStream(toy, "to be", max_new_tokens=100, logits_processors=[SlowSteps(0.02)])
        async with stream:
            async for event in stream:
                if event.index == 2:
                    break
        return stream

    stream = asyncio.run(consume())
    assert not stream._worker.thread.is_alive()
    assert stream.results[0].finish_reason == "cancelled"
    assert 3 <= len(stream.results[0].token_ids) < 10


def test_astream_abandoned_iterator_stops_worker(toy):
    async def consume():
        stream = astream(toy, "to be", max_new_tokens=100, logits_processors=[SlowSteps(0.02)])
        async for event in stream:
            if event.index == 2:
                break
        await asyncio.sleep(0.1)  # the event loop closes the abandoned async generator
        return stream

    stream = asyncio.run(consume())
    stream._worker.thread.join(10)
    assert not stream._worker.thread.is_alive()
    assert stream.results[0].finish_reason == "cancelled"


# ---------------------------------------------------------------- CLI


def genkit_command() -> list[str]:
    return [sys.executable, "-m", "genkit"]


def test_cli_stream_json_has_token_times():
    completed = subprocess.run(
        [*genkit_command(), "generate", "ROMEO:", "KING:", "--stream", "--json", "--max-new-tokens", "6",
         "--seed", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    tokens = [line for line in lines if line["event"] == "token"]
    done = [line for line in lines if line["event"] == "done"]
    assert len(tokens) == 12
    times = [line["time_s"] for line in tokens]
    assert times == sorted(times)
    assert times[0] > 0
    assert [line["sequence"] for line in done] == [0, 1]
    assert [line["prompt"] for line in done] == ["ROMEO:", "KING:"]
    for row in (0, 1):
        text = "".join(line["text"] for line in tokens if line["sequence"] == row)
        assert text == done[row]["text"]


@pytest.fixture(scope="module")
def long_context_checkpoint(tiny_gpt2):
    """A tiny GPT-2 with 4096 positions, so that one request runs for several seconds."""
    return tiny_gpt2(tokenizer="bytes", n_positions=4096).folder


def test_cli_ctrl_c_prints_partial_stats(long_context_checkpoint):
    process = subprocess.Popen(
        [*genkit_command(), "generate", "the", "--model", str(long_context_checkpoint), "--stream",
         "--max-new-tokens", "4000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        first = process.stdout.read(4)  # the prompt, then the first generated byte
        assert first.startswith(b"the")
        assert len(first) == 4
        time.sleep(0.3)  # let more tokens through
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    stderr = err.decode()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "[interrupted: " in stderr
    assert "finish: cancelled" in stderr
    assert "TTFT" in stderr
    generated = int(stderr.split("[interrupted: ")[1].split(" tokens")[0])
    assert 0 < generated < 4000


def test_cli_stream_error_one_line(capsys):
    from genkit.cli import main

    code = main(["generate", "ROMEO:", "--stream", "--top-p", "1.5"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""  # the prompt is echoed only once a token arrives
    assert captured.err.strip().splitlines() == ["genkit: error: invalid top_p=1.5: expected a number in [0.0, 1.0]"]
