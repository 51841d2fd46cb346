"""The quantize check's rules on outputs of real models (no quantization run: fast)."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from edgekit.quantize.check import DEFAULT_BAR, compare_output, compare_outputs, holdout_indices, looks_like_class_scores, summary_line
from edgekit.quantize.settle import samples_needed, settle_report


def test_holdout_is_deterministic_spread_and_bounded() -> None:
    assert holdout_indices(1) == [] and holdout_indices(2) == [1]
    assert holdout_indices(8) == [1, 4, 6] and holdout_indices(16) == [2, 8, 13]  # spread: sets are often sorted by class
    big = holdout_indices(10_000)
    assert len(big) == 32 and big == holdout_indices(10_000) and big[0] < 500 and big[-1] > 9_500
    assert all(i < 3 + 3 for i in holdout_indices(100, samples=3))  # with --samples N: from the first N + slice samples


@pytest.fixture(scope="module")
def digits_logits() -> tuple[np.ndarray, np.ndarray]:
    """Logits of a real classifier (a logistic regression fitted on scikit-learn's digits), and its inputs."""
    from sklearn.linear_model import LogisticRegression

    x, y = zoo.digits()
    x = x.reshape(len(x), -1)
    clf = LogisticRegression(max_iter=500).fit(x[:1000], y[:1000])
    return clf.decision_function(x[1000:1100]).astype(np.float32), x[1000:1100]


def test_class_scores_pass_with_noise_and_fail_when_a_confident_row_flips(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    logits, _ = digits_logits
    ref = [r[None] for r in logits]
    assert looks_like_class_scores(ref)
    rng = np.random.default_rng(0)
    noisy = [r + rng.normal(0, 0.05 * r.std(), r.shape).astype(np.float32) for r in ref]
    res = compare_output("logits", ref, noisy, DEFAULT_BAR)
    assert res["kind"] == "class scores" and res["passed"] and res["confident_rows"] > 50
    # swap the top two classes of three confident rows: 3% of them lose FP32's top-1
    broken = [r.copy() for r in ref]
    sure = [i for i, r in enumerate(ref) if np.sort(np.exp(r[0] - r[0].max()) / np.exp(r[0] - r[0].max()).sum())[-1] > 0.9][:3]
    for i in sure:
        top2 = np.argsort(broken[i][0])[-2:]
        broken[i][0, top2] = broken[i][0, top2[::-1]]
    res = compare_output("logits", ref, broken, DEFAULT_BAR)
    assert not res["passed"] and res["top1_agreement_confident"] < DEFAULT_BAR.min_top1 and res["shortfall"] > 0


def test_embeddings_are_judged_by_worst_row_cosine() -> None:
    """Unit-norm sentence embeddings of the real MiniLM are never taken for class scores."""
    emb = np.random.default_rng(1).normal(size=(6, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = [e[None] for e in emb]
    assert not looks_like_class_scores(ref)
    worse = [r.copy() for r in ref]
    worse[4] = worse[4] + 0.2 * np.random.default_rng(2).normal(size=worse[4].shape).astype(np.float32) / np.sqrt(384)
    res = compare_output("embedding", ref, worse, DEFAULT_BAR)
    assert res["kind"] == "rows" and res["cosine_mean"] > 0.99 and res["cosine_worst"] < 0.99 and not res["passed"]


def test_one_value_per_sample_is_one_row_over_the_slice(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    logits, x = digits_logits
    score = logits[:, :1]  # one score per sample (a regression-like output), shape (1, 1) each
    ref = [r[None] for r in score]
    res = compare_output("p", ref, [r + 0.001 for r in ref], DEFAULT_BAR)
    assert res["kind"] == "values" and res["rows"] == 1 and res["passed"]


def test_samples_needed_grows_with_the_last_move() -> None:
    flat = [1.0] * 20
    assert samples_needed(flat) == 20 and samples_needed([1.0, 2.0]) is None
    small, big = samples_needed([1.0] * 19 + [1.1]), samples_needed([1.0] * 19 + [1.4])
    assert 20 < small < big
    from edgekit.quantize.calibstats import RunningStats

    st = RunningStats(histogram=False)
    for v in [1.0] * 12 + [1.3]:
        st.add(np.array([v], np.float32))
    rep = settle_report({"t": st})
    assert not rep["settled"] and rep["samples_needed"] > 13 and rep["samples_needed_tensor"] == "t"



def test_a_probability_per_sample_is_judged_by_its_confident_decisions() -> None:
    """silero-vad's speech probability: near-silent frames that INT8 lifts over 0.5 are a broken detector,
    even when the cosine over the slice stays high."""
    p = np.concatenate([np.full(28, 0.97), np.full(4, 0.02)]).astype(np.float32)
    ref = [np.array([[v]], np.float32) for v in p]
    flipped = [r.copy() for r in ref]
    flipped[-1][:] = 0.6  # a silent frame now says speech
    res = compare_output("prob", ref, flipped, DEFAULT_BAR)
    assert res["kind"] == "probability" and res["cosine_worst"] > 0.99 and not res["passed"]
    assert compare_output("prob", ref, [r * 0.99 for r in ref], DEFAULT_BAR)["passed"]


def _ctc_lines(logits: np.ndarray, lines: int = 20, per_line: int = 5) -> list[np.ndarray]:
    """CTC-style per-step scores [T, 1, 11] from the real digits classifier: each digit's logits on two steps,
    then a blank step (class 10), as a text-line recognizer emits them."""
    out = []
    for k in range(lines):
        steps = []
        for row in logits[k * per_line:(k + 1) * per_line]:
            digit = np.append(row, row.min() - 5)
            blank = np.append(np.full(10, row.min()), row.max() + 5)
            steps += [digit, digit, blank]
        out.append(np.stack(steps)[:, None, :].astype(np.float32))
    return out


def test_per_step_scores_are_judged_by_the_sequences_a_decoder_reads(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    """A recognizer that keeps 99% of its steps can misread one line in ten: the per-step rules pass it,
    the decoded-sequence rule does not."""
    logits, _ = digits_logits
    ref = _ctc_lines(logits)
    rng = np.random.default_rng(3)
    noisy = [r + rng.normal(0, 0.02 * r.std(), r.shape).astype(np.float32) for r in ref]
    ok = compare_output("ctc", ref, noisy, DEFAULT_BAR)
    assert ok["kind"] == "sequence scores" and ok["sequences"] == 20 and ok["sequence_agreement"] >= 0.95 and ok["passed"]
    misread = [r.copy() for r in ref]
    for line in (4, 11):  # one character of two lines becomes FP32's runner-up (both steps of it)
        for t in (0, 1):
            top2 = np.argsort(misread[line][t, 0, :10])[-2:]
            misread[line][t, 0, top2] = misread[line][t, 0, top2[::-1]]
    bad = compare_output("ctc", ref, misread, DEFAULT_BAR)
    assert bad["top1_agreement_confident"] >= DEFAULT_BAR.min_top1 and bad["top5_containment"] == 1.0  # per step: fine
    assert bad["sequence_agreement_observed"] == pytest.approx(0.9) and bad["sequence_agreement"] <= 0.9 and not bad["passed"]
    assert "of 20 sequences" in summary_line({"outputs": [bad], "samples": 20})
    # [N, T, C] with a batch of 4 lines per feed reads the same; the batch axis is found by trying both
    batched = [np.concatenate([r.transpose(1, 0, 2) for r in ref[i:i + 4]]) for i in range(0, 20, 4)]
    batched_bad = [np.concatenate([r.transpose(1, 0, 2) for r in misread[i:i + 4]]) for i in range(0, 20, 4)]
    res = compare_output("ctc", batched, batched_bad, DEFAULT_BAR)
    assert res["kind"] == "sequence scores" and res["sequences"] == 20 and res["sequence_agreement_observed"] == pytest.approx(0.9)


def test_a_few_sequences_that_decode_the_same_do_not_pass_noisy_int8(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    """3 held-out lines that all decode the same are no proof: INT8 noise as large as the small margins
    would misread many lines of the next ones. The expected agreement (margins x observed noise) says so."""
    logits, _ = digits_logits
    top2 = np.sort(logits, -1)[:, -2:]
    ref = _ctc_lines(logits[top2[:, 1] - top2[:, 0] > 1.5], lines=3, per_line=8)  # clearly written digits
    margins = np.concatenate([np.diff(np.sort(r[:, 0], axis=-1)[:, -2:], axis=-1).ravel() for r in ref])
    rng = np.random.default_rng(2)
    noisy = [r + rng.normal(0, 0.15 * np.median(margins), r.shape).astype(np.float32) for r in ref]
    res = compare_output("ctc", ref, noisy, DEFAULT_BAR)
    assert res["sequence_agreement_observed"] == 1.0 and res["sequence_agreement_expected"] < DEFAULT_BAR.min_sequence and not res["passed"]
    quiet = [r + rng.normal(0, 0.002 * np.median(margins), r.shape).astype(np.float32) for r in ref]
    assert compare_output("ctc", ref, quiet, DEFAULT_BAR)["sequence_agreement_expected"] > 0.99


def test_id_sequences_are_compared_and_other_integer_outputs_are_not(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    logits, _ = digits_logits
    ids = [r.argmax(-1).T.astype(np.int64) for r in _ctc_lines(logits)]  # [1, T]: a recognizer that returns its argmax
    changed = [i.copy() for i in ids]
    changed[0][0, 0] = (changed[0][0, 0] + 1) % 10  # one character of the first line differs in the first of its two steps
    out = compare_outputs(["ids"], [[i] for i in ids], [[c] for c in changed], DEFAULT_BAR)
    assert out[0]["kind"] == "id sequences" and out[0]["sequence_agreement"] == pytest.approx(0.95) and out[0]["passed"]
    changed[1][0, 3:5] = 10  # the second line loses a character: 18 of 20 lines read the same
    assert not compare_outputs(["ids"], [[i] for i in ids], [[c] for c in changed], DEFAULT_BAR)[0]["passed"]
    picked = [np.array([[0, 3, 17], [0, 5, 2]], np.int64)]  # NMS's selected (batch, class, box) rows: no sequence, not compared
    assert compare_outputs(["selected"], [picked], [picked[:1]], DEFAULT_BAR) == []


def test_long_per_anchor_outputs_are_no_sequences(digits_logits: tuple[np.ndarray, np.ndarray]) -> None:
    """A detector's [1, anchors, classes] rows are not steps a decoder reads: no sequence rule on them."""
    logits, _ = digits_logits
    anchors = np.tile(logits, (12, 1))[None]  # [1, 1200, 10]
    assert compare_output("det", [anchors], [anchors * 1.001], DEFAULT_BAR)["kind"] == "class scores"


def test_an_rnn_state_is_no_sequence() -> None:
    """An LSTM's [layers, batch, hidden] state has two "steps" at most: judged by cosine, never decoded."""
    rng = np.random.default_rng(4)
    state = [np.tanh(rng.normal(0, 3, (2, 1, 64))).astype(np.float32) for _ in range(20)]
    res = compare_output("state", state, [s * 0.999 for s in state], DEFAULT_BAR)
    assert res["kind"] != "sequence scores" and "sequence_agreement" not in res
