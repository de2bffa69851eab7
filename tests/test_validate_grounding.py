"""Grounding judge, openai backend, against a loopback HTTP server.

The server (http.server on 127.0.0.1, port 0, in a thread) stands for a remote GPU model server such
as ``vllm serve MedRegA``: it speaks the chat-completions wire format (POST /v1/chat/completions ->
JSON with choices[0].message.content) and can be told to answer slowly, with 429/5xx errors, with
malformed or empty answers.  No network beyond loopback, no model.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from pipeline.regions.coords import format_boxes, normalise_box
from pipeline.validate import ValidationItem, VerdictCache, run_validators
from pipeline.validate.grounding import GroundingJudge, OpenAIBackend, hungarian_iou
from schemas.validation import GroundingConfig

Behaviour = Callable[[dict[str, Any], int], tuple[int, Any, float]]  # (request, n-th call of prompt) -> (status, body, delay)


class FakeServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    n = outer.calls.get(prompt, 0)
                    outer.calls[prompt] = n + 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload, delay = outer.behaviour(body, n)
                    if delay:
                        time.sleep(delay)
                    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "medrega",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


W, H = 120, 100
BOXES_PX = {"liver": [10, 20, 50, 70], "kidney_right": [20, 60, 40, 85], "kidney_left": [80, 60, 100, 85]}
BOXES = {t: list(normalise_box(b, W, H)) for t, b in BOXES_PX.items()}
NAMES = {"liver": "liver", "right kidney": "kidney_right", "left kidney": "kidney_left"}


def item(terms: list[str], rid: str = "r0", seed: int = 0, lang: str = "en") -> ValidationItem:
    img = np.random.default_rng(seed).integers(0, 255, size=(H, W), dtype=np.uint8)
    regions = [{"term": t, "box": BOXES[t], "box_px": BOXES_PX[t], "area": 1} for t in terms]
    row = {"id": rid, "image": "x.png", "width": W, "height": H, "conversations": [],
           "meta": {"modality": "CT", "axis": "axial", "lang": lang, "regions": regions}}
    return ValidationItem(row, img)


def oracle(body: dict[str, Any], n: int, *, t2r: Callable[[str], str] | None = None,
           r2t: Callable[[str], str] | None = None) -> tuple[int, Any, float]:
    """A perfect model: the right box for 'bounding box of the <ref>X</ref>', the right name for a box."""
    prompt = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
    m = re.search(r"<ref>(.*?)</ref>", prompt)
    if m:
        term = NAMES[m.group(1)]
        return 200, completion(t2r(term) if t2r else f"<ref>{m.group(1)}</ref><box>{format_boxes([BOXES[term]])}</box>"), 0
    box = [int(v) for v in re.findall(r"\d+", prompt.split("<box>")[1].split("</box>")[0])]
    term = next(t for t, b in BOXES.items() if b == box)
    name = next(k for k, v in NAMES.items() if v == term)
    return 200, completion(r2t(term) if r2t else f"The {name}."), 0


def cfg(server: FakeServer, tmp_path=None, **kw: Any) -> GroundingConfig:
    base = dict(base_url=server.base_url, model="medrega", api_key="test-key", timeout_s=5, max_retries=3,
                backoff_s=0.01, concurrency=4, cache_dir=str(tmp_path / "answers") if tmp_path else None)
    base.update(kw)
    return GroundingConfig(**base)


def make_judge(server: FakeServer, tmp_path=None, sleeps: list[float] | None = None, **kw: Any) -> GroundingJudge:
    c = cfg(server, tmp_path, **kw)
    backend = OpenAIBackend(c, sleep=(sleeps.append if sleeps is not None else time.sleep))
    return GroundingJudge(c, glossary=None, backend=backend)


# ---------------------------------------------------------------------------------------------------


def test_perfect_model_passes_and_wire_format(tmp_path) -> None:
    with FakeServer(oracle) as srv:
        j = make_judge(srv)
        it = item(["liver", "kidney_right"])
        (r,) = j.validate([it])
    assert r.verdict == "pass" and r.score == 1.0, r.reason
    assert len(srv.requests) == 4  # 2 terms x (t2r, r2t)
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
    body = req["body"]
    assert body["model"] == "medrega" and body["max_tokens"] == 128 and body["temperature"] == 0.0
    assert "skip_special_tokens" not in body
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    from PIL import Image

    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(png), it.image)


def test_extra_body_reaches_the_server() -> None:
    with FakeServer(oracle) as srv:
        make_judge(srv, tasks=["text_to_region"], extra_body={"skip_special_tokens": False}).validate([item(["liver"])])
    assert srv.requests[0]["body"]["skip_special_tokens"] is False


def test_slow_answer_times_out_then_retry_succeeds() -> None:
    def slow_first(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        status, payload, _ = oracle(body, n)
        return status, payload, (1.5 if n == 0 else 0.0)

    sleeps: list[float] = []
    with FakeServer(slow_first) as srv:
        j = make_judge(srv, sleeps=sleeps, timeout_s=0.3, tasks=["text_to_region"])
        (r,) = j.validate([item(["liver"])])
    assert r.verdict == "pass" and r.score == 1.0
    assert j.backend.attempts == 2 and sleeps == [0.01]
    assert len(srv.requests) == 2


def test_429_and_500_then_success_with_exponential_backoff() -> None:
    def flaky(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        if n == 0:
            return 429, {"error": {"message": "rate limited"}}, 0
        if n == 1:
            return 500, {"error": {"message": "boom"}}, 0
        if n == 2:
            return 503, b"Service Unavailable", 0
        return oracle(body, n)

    sleeps: list[float] = []
    with FakeServer(flaky) as srv:
        j = make_judge(srv, sleeps=sleeps, backoff_s=0.01, max_retries=3, tasks=["text_to_region"])
        (r,) = j.validate([item(["liver"])])
    assert r.verdict == "pass"
    assert j.backend.attempts == 4 and sleeps == [0.01, 0.02, 0.04]


def test_retries_exhausted_is_transient_flag_and_not_cached(tmp_path) -> None:
    def down(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        return 503, {"error": {"message": "overloaded"}}, 0

    sleeps: list[float] = []
    with FakeServer(down) as srv:
        j = make_judge(srv, tmp_path, sleeps=sleeps, max_retries=2, tasks=["text_to_region"])
        vcache = VerdictCache(tmp_path / "verdicts")
        (res,) = run_validators([item(["liver"])], [j], cache=vcache)
    r = res[0]
    assert r.verdict == "flag" and r.codes == ["model_error"] and r.transient is True
    assert "InternalServerError" in r.reason or "503" in r.reason
    assert len(srv.requests) == 3 and len(sleeps) == 2
    assert vcache.entries() == [] and not list((tmp_path / "answers").rglob("*.json"))


def test_client_error_is_not_retried() -> None:
    def bad(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        return 400, {"error": {"message": "bad request: image too large"}}, 0

    with FakeServer(bad) as srv:
        j = make_judge(srv, tasks=["text_to_region"])
        (r,) = j.validate([item(["liver"])])
    assert r.codes == ["model_error"] and len(srv.requests) == 1


@pytest.mark.parametrize(
    "payload,code",
    [
        (completion("I am not sure where it is."), "t2r_no_box"),
        (completion(""), "empty_answer"),
        (completion(None), "empty_answer"),
        ({"id": "x", "object": "chat.completion", "choices": []}, "malformed_response"),
        (b"{not json", "model_error"),
    ],
)
def test_malformed_and_empty_answers_flag(payload: Any, code: str) -> None:
    with FakeServer(lambda body, n: (200, payload, 0)) as srv:
        j = make_judge(srv, tasks=["text_to_region"], max_retries=0)
        (r,) = j.validate([item(["liver"])])
    assert r.verdict == "flag" and r.codes == [code], r.reason


def test_wrong_answers_scored() -> None:
    shifted = lambda term: "<ref>x</ref><box>[[600, 600, 900, 900]]</box>"  # noqa: E731
    with FakeServer(lambda b, n: oracle(b, n, t2r=shifted, r2t=lambda t: "This is the spleen.")) as srv:
        j = make_judge(srv)
        (r,) = j.validate([item(["liver"])])
    assert r.verdict == "flag" and set(r.codes) == {"t2r_low_iou", "r2t_mismatch"} and r.score == 0.0
    assert "liver IoU 0.00 < 0.5" in r.reason and "-> spleen" in r.reason

    mirror = lambda term: "左肾"  # noqa: E731 - the other side, in Chinese
    with FakeServer(lambda b, n: oracle(b, n, r2t=mirror)) as srv:
        (r,) = make_judge(srv, tasks=["region_to_text"]).validate([item(["kidney_right"])])
    assert r.codes == ["r2t_mirror"] and r.verdict == "flag"

    with FakeServer(lambda b, n: oracle(b, n, r2t=lambda t: "It is the kidney.")) as srv:
        (r,) = make_judge(srv, tasks=["region_to_text"]).validate([item(["kidney_right"])])
    assert r.verdict == "pass" and r.codes == ["r2t_no_side"] and r.score == 0.5

    with FakeServer(lambda b, n: oracle(b, n, r2t=lambda t: "No idea.")) as srv:
        (r,) = make_judge(srv, tasks=["region_to_text"]).validate([item(["liver"])])
    assert r.codes == ["r2t_unresolved"]

    half = lambda term: f"liver[[{BOXES['liver'][0]}, {BOXES['liver'][1]}, {BOXES['liver'][2]}, {BOXES['liver'][3]}]] [[700, 700, 800, 800]]"  # noqa: E501,E731
    with FakeServer(lambda b, n: oracle(b, n, t2r=half)) as srv:
        (r,) = make_judge(srv, tasks=["text_to_region"], iou_pass=0.7, iou_fail=0.6).validate([item(["liver"])])
    assert r.score == pytest.approx(0.5) and r.verdict == "fail"  # 1 of 2 predicted boxes right


def test_answer_cache_rerun_costs_nothing_and_dedupes(tmp_path) -> None:
    items = [item(["liver", "kidney_left"], rid="en", lang="en"), item(["liver", "kidney_left"], rid="zh", lang="zh"),
             item(["liver"], rid="other", seed=1)]
    with FakeServer(oracle) as srv:
        first = make_judge(srv, tmp_path).validate(items)
        assert len(srv.requests) == 4 + 2  # EN/ZH copies share image + questions: asked once
        j2 = make_judge(srv, tmp_path)
        second = j2.validate(items)
        assert len(srv.requests) == 6 and j2.asked == 0 and j2.cache.hits == 10
    assert [r.model_dump() for r in first] == [r.model_dump() for r in second]
    assert all(r.verdict == "pass" for r in first)


def test_concurrency_is_bounded() -> None:
    def slowish(body: dict[str, Any], n: int) -> tuple[int, Any, float]:
        s, p, _ = oracle(body, n)
        return s, p, 0.05

    with FakeServer(slowish) as srv:
        j = make_judge(srv, concurrency=3, tasks=["text_to_region"])
        res = j.validate([item(["liver"], rid=str(i), seed=i) for i in range(12)])
    assert len(srv.requests) == 12 and all(r.verdict == "pass" for r in res)
    assert 1 <= srv.max_in_flight <= 3


def test_api_key_from_env_and_missing_base_url(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="base_url"):
        GroundingJudge(GroundingConfig(), glossary=None)
    monkeypatch.setenv("MY_KEY", "from-env")
    with FakeServer(oracle) as srv:
        c = cfg(srv, api_key=None, api_key_env="MY_KEY", tasks=["text_to_region"])
        GroundingJudge(c, glossary=None).validate([item(["liver"])])
    assert srv.requests[0]["auth"] == "Bearer from-env"


def test_hungarian_iou() -> None:
    a, b = [0, 0, 10, 10], [20, 20, 30, 30]
    assert hungarian_iou([b, a], [a, b]) == (1.0, [1.0, 1.0])
    assert hungarian_iou([a], [a, b])[0] == pytest.approx(0.5)  # a true box missed
    assert hungarian_iou([a, b, [50, 50, 60, 60]], [a, b])[0] == pytest.approx(2 / 3)  # an extra box
    assert hungarian_iou([], [a]) == (0.0, [])
    assert hungarian_iou([[0, 0, 10, 5]], [a])[0] == pytest.approx(0.5)


# ------------------------------------------------------------------------- transformers backend

WORDS = ("the liver spleen kidney left right is at of in this ct image please output bounding box what structure "
         "region answer with its name only anatomical <ref> </ref> <box> </box> [[ ]] , . ? user assistant :").split()


def build_tiny_llava(path, extra_words: list[str]) -> None:
    """A tiny randomly initialised LLaVA (CLIP vision tower + Llama LM) with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<image>"])}
    for w in [*WORDS, *extra_words]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_id=4, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        image_token="<image>", num_additional_image_tokens=1,
    ).save_pretrained(path)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    import transformers  # noqa: F401
    d = tmp_path_factory.mktemp("tiny-llava")
    numbers = sorted({str(v) for b in BOXES.values() for v in b})
    build_tiny_llava(d, numbers)
    return d


def tf_judge(path, **kw: Any) -> GroundingJudge:
    c = GroundingConfig(backend="transformers", model_path=str(path), device="cpu", max_new_tokens=4,
                        t2r_prompt="please output the bounding box of the <ref>{name}</ref> in this ct image",
                        r2t_prompt="what is the structure in the region <box>{boxes}</box> ?", **kw)
    return GroundingJudge(c, glossary=None)


def test_transformers_backend_real_generation_batching(llava_dir) -> None:
    """Real generate() on a random tiny LLaVA: batched answers equal one-by-one answers (left padding),
    and whatever the random model says becomes a verdict with a reason (nothing crashes)."""
    items = [item(["liver", "kidney_left"], rid=str(i), seed=i) for i in range(3)]
    j1 = tf_judge(llava_dir, batch_size=1)
    j5 = tf_judge(llava_dir, batch_size=5)
    r1, r5 = j1.validate(items), j5.validate(items)
    assert j1.backend.device == "cpu" and type(j1.backend._model).__name__ == "LlavaForConditionalGeneration"
    assert [r.model_dump() for r in r1] == [r.model_dump() for r in r5]
    assert all(r.verdict in ("pass", "flag", "fail") and r.reason for r in r1)
    assert j1.asked == 3 * 4


def test_transformers_backend_decode_and_score(llava_dir, monkeypatch) -> None:
    """generate() scripted to emit a known answer (tag-stripped, as skip_special_tokens leaves it):
    the decode -> parse -> score path must give the right verdicts."""
    import torch

    j = tf_judge(llava_dir, batch_size=2)
    j.backend.load()
    model, tok = j.backend._model, j.backend._processor.tokenizer
    real_generate = model.generate
    box = " , ".join(str(v) for v in BOXES["liver"])
    script = {"bounding": f"the liver is at [[ {box} ]]", "structure": "the spleen ."}

    def scripted(**inputs: Any) -> Any:
        out = real_generate(**inputs)  # exercise the real call, then replace the continuation
        prompts = tok.batch_decode(inputs["input_ids"], skip_special_tokens=True)
        new = [tok(script["bounding" if "bounding" in p else "structure"], add_special_tokens=False)["input_ids"]
               for p in prompts]
        width = max(map(len, new))
        cont = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in new])
        return torch.cat([inputs["input_ids"], cont], dim=1) if out is not None else out

    monkeypatch.setattr(model, "generate", scripted)
    (r,) = j.validate([item(["liver"])])
    assert r.codes == ["r2t_mismatch"] and "liver IoU" not in r.reason, r.reason  # t2r passed, r2t said spleen
    assert "-> spleen" in r.reason and r.score == 0.0
