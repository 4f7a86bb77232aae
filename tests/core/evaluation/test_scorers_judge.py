"""MM-Vet and LLaVA-Bench-in-the-Wild scored through a real local chat-completions server: prompts, retries,
the disk cache (a rerun sends nothing), the judge model in the result, and the API key never written."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.evaluation.scorers import llava_wild, mmvet
from core.evaluation.scorers.judge import Judge, JudgeConfig, JudgeError

SECRET = "sk-test-very-secret-key-123"


class FakeJudge(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like OpenAI. MM-Vet: "1.0" when the ground truth occurs in the
    prediction, else "0.0"; predictions "GARBLED" and "ALWAYS_BAD" get unparsable replies (the first only
    until the retry suffix appears). LLaVA-W: "8 <len(answer) % 10>" on the first line."""

    requests: list[dict] = []
    fail_next_with_500 = 0

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.headers.get("Authorization") != f"Bearer {SECRET}":
            return self._send(401, {"error": f"bad key {self.headers.get('Authorization')}"})
        if FakeJudge.fail_next_with_500:
            FakeJudge.fail_next_with_500 -= 1
            return self._send(500, {"error": "overloaded"})
        self._send(
            200,
            {
                "model": body["model"],
                "choices": [{"message": {"role": "assistant", "content": self._reply(body)}}],
            },
        )

    def _reply(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        if "[Assistant 2]" in content:
            answer = content.split("[Assistant 2]\n")[1].split("\n\n[End of Assistant 2]")[0]
            return "garbage line" if answer == "GARBLED" else f"8 {len(answer) % 10}\nBecause."
        question, truth, pred, _ = content.split("\n")[-1 if "(digit)" not in content else -2].split(" | ")
        if pred == "ALWAYS_BAD" or (pred == "GARBLED" and "(digit)" not in content):
            return "n/a"
        if pred == "GARBLED":
            return "0.7"
        return "1.0" if truth.strip() in pred else "0.0"

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    FakeJudge.requests = []
    FakeJudge.fail_next_with_500 = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def judge_config(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JudgeConfig:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return JudgeConfig(base_url=server, model="judge-test-1", cache_dir=tmp_path / "cache", retry_wait_s=0)


def _mmvet_files(tmp: Path) -> dict[str, Path]:
    data = {
        "v1_0": {
            "imagename": "v1_0.png",
            "capability": ["ocr", "math"],
            "question": "What is x?",
            "answer": "-1<AND>-5",
        },
        "v1_1": {"imagename": "v1_1.png", "capability": ["rec"], "question": "What animal?", "answer": "dog"},
        "v1_2": {"imagename": "v1_2.png", "capability": ["rec", "know"], "question": "Who?", "answer": "Ada"},
        "v1_3": {"imagename": "v1_3.png", "capability": ["gen"], "question": "Explain.", "answer": "joke"},
    }
    (tmp / "mm-vet.json").write_text(json.dumps(data))
    (tmp / "images").mkdir()
    return {"annotations": tmp / "mm-vet.json", "images": tmp / "images"}


def test_mmvet_grades_with_official_prompt_retries_and_cache(
    judge_config: JudgeConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    samples = mmvet.read(_mmvet_files(tmp_path))
    assert mmvet.prompt(samples[0]) == "What is x?"
    preds = {"v1_0": "x = -1 <AND> -5", "v1_1": "a cat", "v1_2": "GARBLED", "v1_3": "ALWAYS_BAD"}
    judge = Judge(judge_config)
    result = mmvet.score(samples, preds, judge=judge)
    # The fake's rule (truth in prediction: 1.0 / 0.0), 0.7 after one retry, 0.0 after MM-Vet's retries.
    grades = {"v1_0": 1.0, "v1_1": 0.0, "v1_2": 0.7, "v1_3": 0.0}
    assert result[mmvet.TOTAL] == pytest.approx(100 * sum(grades.values()) / 4)
    assert result[f"{mmvet.CAPABILITY_PREFIX}rec"] == pytest.approx(100 * (0.0 + 0.7) / 2)
    assert result[f"{mmvet.CAPABILITY_PREFIX}math"] == pytest.approx(100.0)
    assert result.judge_model == "judge-test-1"
    # 1 + 1 + 2 + (1 + 4 retries) requests, each to the chat-completions path with the configured model.
    assert len(FakeJudge.requests) == judge.requests_sent == 9
    first = FakeJudge.requests[0]["body"]
    assert first["model"] == "judge-test-1" and first["max_tokens"] == 3 and first["temperature"] == 0.0
    assert (
        first["messages"][0]["content"]
        == mmvet.GRADER_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = -1 <AND> -5 | "
    )
    retry_temps = [
        r["body"]["temperature"]
        for r in FakeJudge.requests
        if "(digit)" in r["body"]["messages"][0]["content"]
    ]
    assert retry_temps == [0.0, 0.0, 0.5, 1.0, 1.5]
    # A rerun over the cache sends nothing and scores the same.
    again = Judge(judge_config)
    assert mmvet.score(samples, preds, judge=again) == result and again.requests_sent == 0
    assert len(FakeJudge.requests) == 9
    # Another judge model is another cache key.
    other = Judge(judge_config.model_copy(update={"model": "judge-test-2"}))
    assert mmvet.score(samples, preds, judge=other).judge_model == "judge-test-2" and other.requests_sent == 9
    # The key went in the header only: not in logs, not in the cache.
    assert all(r["auth"] == f"Bearer {SECRET}" for r in FakeJudge.requests)
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "judge-test-1" in cached and SECRET not in cached and SECRET not in caplog.text


def test_judge_retries_server_errors_and_scrubs_the_key(
    judge_config: JudgeConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    FakeJudge.fail_next_with_500 = 2
    judge = Judge(judge_config)
    assert judge.complete([{"role": "user", "content": "q | dog | dog | "}], 0.0, 3) == "1.0"
    assert judge.requests_sent == 3
    monkeypatch.setenv("OPENAI_API_KEY", SECRET + "-wrong")  # the server echoes the bad key in its 401 body
    with pytest.raises(JudgeError) as err:
        Judge(judge_config).complete([{"role": "user", "content": "q | cat | cat | "}], 0.0, 3)
    assert "HTTP 401" in str(err.value) and SECRET not in str(err.value) and SECRET not in caplog.text


def test_judge_config_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SEAGRID_JUDGE_URL", raising=False)
    monkeypatch.delenv("SEAGRID_JUDGE_MODEL", raising=False)
    with pytest.raises(JudgeError, match="SEAGRID_JUDGE_URL and SEAGRID_JUDGE_MODEL"):
        JudgeConfig.from_env()
    monkeypatch.setenv("SEAGRID_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SEAGRID_JUDGE_MODEL", "gpt-4-0613")
    config = JudgeConfig.from_env(cache_dir=tmp_path)
    assert (config.base_url, config.model, config.cache_dir) == (
        "http://127.0.0.1:9/v1",
        "gpt-4-0613",
        tmp_path,
    )


def _wild_files(tmp: Path) -> dict[str, Path]:
    def jsonl(name: str, rows: list[dict]) -> Path:
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp / name

    (tmp / "images").mkdir()
    return {
        "questions": jsonl(
            "questions.jsonl",
            [
                {"question_id": 0, "image": "001.jpg", "text": "What is shown?", "category": "conv"},
                {"question_id": 1, "image": "001.jpg", "text": "Describe it.", "category": "detail"},
                {"question_id": 2, "image": "002.jpg", "text": "Why?", "category": "complex"},
            ],
        ),
        "context": jsonl(
            "context.jsonl",
            [
                {"id": "a", "image": "001.jpg", "caption": ["A dog.", "On grass."]},
                {"id": "b", "image": "002.jpg", "caption": "Rain."},
            ],
        ),
        "answers": jsonl(
            "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(3)]
        ),
        "images": tmp / "images",
    }


def test_llava_wild_relative_score(judge_config: JudgeConfig, tmp_path: Path) -> None:
    samples = llava_wild.read(_wild_files(tmp_path))
    assert samples[0].context == "A dog.\nOn grass." and samples[0].reference == "reference 0"
    preds = {"0": "a dog", "1": "a dog on grass", "2": "GARBLED"}  # lengths 5, 14; 2 is unparsable
    judge = Judge(judge_config)
    result = llava_wild.score(samples, preds, judge=judge)
    # LLaVA's summary: pairs (8, 5), (8, 4), (-1, -1); means over all three, relative = 100 * model / ref.
    ref, model = round((8 + 8 - 1) / 3, 3), round((5 + 4 - 1) / 3, 3)
    assert result[llava_wild.RELATIVE] == pytest.approx(100 * model / ref)
    assert result[llava_wild.REFERENCE_SCORE] == pytest.approx(10 * ref)
    assert result[llava_wild.UNPARSED] == 1.0
    assert result[f"{llava_wild.CATEGORY_PREFIX}conv/{llava_wild.RELATIVE}"] == pytest.approx(100 * 5 / 8)
    assert result.judge_model == "judge-test-1"
    body = FakeJudge.requests[0]["body"]
    assert body["temperature"] == 0.2 and body["messages"][0]["content"] == llava_wild.SYSTEM
    assert body["messages"][1]["content"] == (
        "[Context]\nA dog.\nOn grass.\n\n[Question]\nWhat is shown?\n\n[Assistant 1]\nreference 0\n\n"
        "[End of Assistant 1]\n\n[Assistant 2]\na dog\n\n[End of Assistant 2]\n\n[System]\n"
        f"{llava_wild.RULE}\n\n"
    )
    rerun = Judge(judge_config)
    assert llava_wild.score(samples, preds, judge=rerun) == result and rerun.requests_sent == 0


@pytest.mark.parametrize(
    ("review", "pair"),
    [("8 6\nok", (8.0, 6.0)), ("7,9", (7.0, 9.0)), ("8  6", (-1.0, -1.0)), ("Score: 8 6", (-1.0, -1.0))],
)
def test_llava_wild_score_parsing(review: str, pair: tuple[float, float]) -> None:
    assert llava_wild.parse_scores(review) == pair


def test_unreachable_judge_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = JudgeConfig(
        base_url=f"http://127.0.0.1:9/v1?key={SECRET}",
        model="m",
        cache_dir=tmp_path,
        max_attempts=2,
        retry_wait_s=0,
    )
    judge = Judge(config)
    with pytest.raises(JudgeError, match=r"unreachable") as err:
        judge.complete([{"role": "user", "content": "hi"}], 0.0, 3)
    assert judge.requests_sent == 2 and SECRET not in str(err.value) and not list(tmp_path.rglob("*.json"))
