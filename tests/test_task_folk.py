"""The ``folk`` task: ABC normalisation and tokens, the validity checks (music21 parse,
bar lengths, novelty) with negative controls, and a tiny run of train and generate."""
from fractions import Fraction

import numpy as np
import pytest

from unrolled.cli import main
from unrolled.tasks import abc

JIG = """X:7
T:The Test Jig
R:jig
C:trad.
M:6/8
L:1/8
N:a note that is not kept
K:D major
% a comment
A|"D"d2f "A7"ecA|!trill!d2f {g}a2f|(gfe) ~d>cB|A3- A2:|
|:g|fga (3gfe d|cde A2G|1 FAd ced|d3 d2:|2 FAd ced|d3-d2|]
w: some words that are not music
"""
REEL = """X:1
T:Reel
M:C|
L:1/8
K:Ador
EA A2 ABcd|eaag efge|dGG2 BGdG|B2 AG EDB,D|
EA A2 ABcd|eaag efge|dega bgeg|afge a2 ab|]
"""


def tokens(text):
    toks, reason = abc.normalise_tune(text)
    assert reason is None, reason
    return toks


def test_normalise_keeps_melody_and_headers():
    t = tokens(JIG)
    assert t[:3] == ["M:6/8", "L:1/8", "K:D"]
    body = "".join(t[3:])
    # chords in quotes, decorations, grace notes, slurs, ties, lyrics and comments are gone
    for gone in ('"', "!", "{", "~", "-", "w:", "comment", "g}a"):
        assert gone not in body
    assert "(3" in t  # tuplets stay
    assert "|1" in t and ":|2" in t  # endings are one token each, with their bar line
    assert t[3:8] == ["A", "|", "d", "2", "f"]
    assert tokens(REEL)[:3] == ["M:2/2", "L:1/8", "K:Ador"]
    assert "B," in tokens(REEL)


def test_tokens_round_trip_through_text():
    for tune in (JIG, REEL):
        t = tokens(tune)
        text = abc.tune_text(t, 3, "Again")
        assert text.startswith("X:3\nT:Again\nM:") and text.endswith("\n\n")
        assert tokens(text) == t
        assert abc.tokenize_body("".join(t[3:])) == t[3:]


def test_tunes_left_out_with_a_reason():
    assert abc.normalise_tune("X:1\nM:none\nL:1/8\nK:G\nGABc|\n") == (None, "meter 'none'")
    assert abc.normalise_tune("X:1\nM:4/4\nK:G\n[GB]ABc|\n")[1] == "chords or multi-bar rests"
    assert abc.normalise_tune("X:1\nM:4/4\nK:G\nGABc|[K:D]d4|\n")[1] == "inline field"
    assert abc.normalise_tune("X:1\nM:4/4\nL:1/8\nGABc|\n")[1] == "no K: field"
    assert len(abc.split_tunes(JIG + "\n" + REEL)) == 2


def test_durations_follow_the_abc_standard():
    def lengths(body, meter="4/4"):
        return [b[0] for b in abc.bar_lengths(tokens(f"X:1\nM:{meter}\nL:1/8\nK:C\n{body}\n"))]

    assert lengths("A2 B/ c/ d3 e2|") == [Fraction(8)]
    assert lengths("A>B c<d e// f3/ g//|") == [Fraction(2 + 2 + Fraction(1, 4) +
                                                        Fraction(3, 2) + Fraction(1, 4))]
    assert lengths("(3ABc d2 (3A2B2c2|") == [Fraction(2 + 2 + 4)]
    assert lengths("A4 | | B4 |") == [4, 4]  # an empty bar is no bar


def test_bar_check_with_negative_controls():
    ok, msg = abc.bars_ok(tokens(JIG))
    assert ok, msg  # pickups at the start and at each repeat are allowed
    ok, msg = abc.bars_ok(tokens(REEL))
    assert ok, msg
    long_bar = REEL.replace("eaag efge|", "eaag efgea|", 1)
    ok, msg = abc.bars_ok(tokens(long_bar))
    assert not ok and "bar 2 lasts 9 units, more than the meter's 8" in msg
    short_bar = REEL.replace("dGG2 BGdG|", "dGG2 BGd|", 1)
    ok, msg = abc.bars_ok(tokens(short_bar))
    assert not ok and "less than" in msg
    # a short last bar is a pickup's partner, but a long one is not
    assert abc.bars_ok(tokens(REEL.replace("a2 ab|]", "a2|]")))[0]
    assert not abc.bars_ok(tokens(REEL.replace("a2 ab|]", "a2 abc|]")))[0]


def test_music21_parses_valid_and_refuses_empty():
    pytest.importorskip("music21")
    assert abc.parse_ok(abc.tune_text(tokens(JIG)))[0]
    assert abc.parse_ok(REEL)[0]
    ok, msg = abc.parse_ok("X:1\nT:x\nM:4/4\nL:1/8\nK:C\n|\n")
    assert not ok and msg


def test_edit_distance_and_nearest_tune():
    assert abc.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    k, s = [ord(c) for c in "kitten"], [ord(c) for c in "sitting"]
    assert abc.edit_distance(k, s) == 3
    assert abc.edit_distance([], [1, 2]) == 2
    assert abc.edit_distance(k, s, limit=1) > 1  # stops early, above the limit
    jig, reel = tokens(JIG), tokens(REEL)
    near = abc.Nearest([jig, reel])
    assert near.find(reel) == (0.0, 1)  # a copy
    changed = reel[:-3] + ["c", "2", "|]"]
    d, k = near.find(changed)
    assert k == 1 and 0 < d < 0.1
    body = len(reel) - 3
    assert d == pytest.approx(abc.edit_distance(
        [hash(t) for t in changed[3:]], [hash(t) for t in reel[3:]]) / body)


def test_folk_train_and_generate_through_the_cli(tmp_path, capsys):
    pytest.importorskip("music21")
    data = abc.music21_corpus() / "oneills1850" / "0001-0050.abc"
    out = tmp_path / "run"
    rc = main(["train", "folk", "--data", str(data), "--out", str(out), "--epochs", "1",
               "--quiet", "--hidden", "24", "--embed", "8", "--batch-size", "4",
               "--chunk", "32", "--clean", "false", "--val-fraction", "0.1",
               "--test-fraction", "0.1"])
    assert rc == 0, capsys.readouterr().err
    text = (out / "sample.abc").read_text()
    assert text.startswith("X:1\nT:Sample 1\nM:")
    gen = tmp_path / "tunes"
    rc = main(["generate", str(out), "--tunes", "2", "--out", str(gen), "--seed", "3",
               "--check"])
    err = capsys.readouterr()
    assert rc == 0, err.err
    for i in (1, 2):
        t = (gen / f"tune_00{i}.abc").read_text()
        head = t.split("\n")[:5]
        assert head[0] == f"X:{i}" and head[2].startswith("M:") and head[4].startswith("K:")
        assert t.endswith("\n\n")
    mids = sorted(gen.glob("tune_*.mid"))
    assert mids and all(m.read_bytes()[:4] == b"MThd" for m in mids)
    page = (gen / "index.html").read_text()
    assert "Tune 2" in page and "tune_001.abc" in page
    checks = (gen / "checks.txt").read_text()
    assert checks.startswith("generated: 2 tunes") and "real (held-out test tunes)" in checks
    assert "generated: 2 tunes" in err.out
    # one tune printed without --tunes; bad use gives one-line errors naming the fix
    assert main(["generate", str(out), "--length", "50", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("X:1\nT:Generated\nM:")
    for argv in (["generate", str(out), "--tunes", "2"], ["predict", str(out), "ABc"],
                 ["generate", str(out), "--prime", "A"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "unrolled generate MODEL --tunes" in err


def test_generate_tunes_errors_are_one_line(tmp_path, capsys):
    rc = main(["generate", str(tmp_path / "missing"), "--tunes", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_split_keeps_copies_together(tmp_path):
    from unrolled.config import resolve_config
    from unrolled.tasks.folk import FolkTask

    tunes = [JIG.replace("X:7", f"X:{i}") for i in range(6)] + \
        [REEL.replace("ab|]", f"{n}|]").replace("X:1", f"X:{10 + i}")
         for i, n in enumerate(["ab", "a2", "b2", "g2", "e2", "f2"])]
    f = tmp_path / "t.abc"
    f.write_text("\n".join(tunes))
    cfg = resolve_config(FolkTask, None, {"batch_size": "2", "val_fraction": "0.2",
                                          "test_fraction": "0.2"})
    task = FolkTask(cfg)
    task.load(f)
    jig = tokens(JIG)
    holding = [s for s, v in task.tunes.items() if jig in v]
    assert len(holding) == 1 and task.tunes[holding[0]].count(jig) == 6
    assert sum(len(v) for v in task.tunes.values()) == 12
    assert np.all(task.splits["train"][[0, -1]] == task.vocab.index(abc.END))
    cfg["unit"] = "1/3"
    with pytest.raises(ValueError, match="--unit must be a unit length such as 1/8"):
        FolkTask(cfg).load(f)


def test_music21_is_given_a_time_limit(monkeypatch):
    pytest.importorskip("music21")
    import time

    from music21 import converter

    monkeypatch.setattr(converter, "parse", lambda *a, **k: time.sleep(5))
    t0 = time.perf_counter()
    ok, msg = abc.parse_ok(REEL, seconds=0.2)
    assert not ok and "did not finish in 0.2 s" in msg and time.perf_counter() - t0 < 2


def test_rescale_to_one_unit_keeps_the_music():
    tune = ("X:1\nM:2/4\nL:1/16\nK:G\nB/2-c/2 | d2 d>-c B2 A-B | (GBAG) F2 D-F | "
            "G4 z2 (3ABc | G8 ||\n")
    t = tokens(tune)
    r = abc.rescale(t, "1/8")
    assert r[:3] == ["M:2/4", "L:1/8", "K:G"]
    assert r[3:8] == ["B", "/4", "c", "/4", "|"] and "2" not in r[8:10]
    # every bar lasts the same in whole notes: half as many eighths as sixteenths
    assert [b[0] * 2 for b in abc.bar_lengths(r)] == [b[0] for b in abc.bar_lengths(t)]
    assert abc.bars_ok(r) == abc.bars_ok(t) == (True, "")
    assert abc.rescale(abc.rescale(r, "1/16"), "1/8") == r  # and back
    assert abc.rescale(tokens(REEL), "1/8") == tokens(REEL)  # already in eighths
    long_bar = tokens(tune.replace("G8 ||", "G8 A ||"))
    assert not abc.bars_ok(abc.rescale(long_bar, "1/8"))[0]  # negative control
