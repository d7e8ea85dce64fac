"""The report people read: the verdict's numbers and words, calibration bins, and the page in a real browser."""

import json
import math
import re
import shutil
import subprocess

import pytest
import torch

from kdgen.cli import main
from kdgen.reporting.results import Results
from kdgen.reporting.verdict import finding, findings, headline
from kdgen.training.metrics import calibration_bins

TINY = ["data.name=synthetic", "data.num_train=128", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=1", "train.batch_size=16", "seeds=[0,1,2]",
        "generations.count=2", "tolerance.k=3", "--no-progress"]


def test_a_difference_within_noise_is_called_no_significant_difference():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303 -> CI 2 ± 2.484; t = 3.46 -> p 0.074
    found = finding({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "tolerant", "strict", "single", 2)
    assert (found.n, found.mean) == (3, 2.0)
    assert found.low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert found.high == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert found.p == pytest.approx(0.0741, abs=1e-3)
    assert "no significant difference** with 3 seeds" in found.sentence()
    assert headline([found]).startswith("No significant difference between tolerant and strict with 3 seeds")


def test_a_clear_difference_is_called_better_or_worse_and_one_seed_is_not_tested():
    better = finding({s: 1.0 + 0.05 * (s % 3) for s in range(5)}, {s: 0.0 for s in range(5)}, "tolerant", "strict",
                     "single", 3)
    assert better.p < 0.001 and "is **better** with 5 seeds" in better.sentence()
    assert headline([better]).startswith("Tolerant beat strict at generation 3")
    worse = finding({s: 0.0 for s in range(5)}, {s: 1.0 + 0.05 * (s % 3) for s in range(5)}, "tolerant", "strict",
                    "single", 3)
    assert "**worse**" in worse.sentence()
    single = finding({0: 1.0}, {0: 0.0}, "tolerant", "strict", "single", 1)
    assert "cannot be tested" in single.sentence() and "cannot be tested" in headline([single])


def test_the_same_difference_on_every_seed_is_said_as_it_is():
    # one digits test image is 0.28 points: +0.28 on every seed has no spread, so no t-test, interval or power;
    # it is not 'no difference': the sentence gives the difference and the exact sign test's p = 2 * 0.5^3
    a = {s: 100 * (350 + s) / 360 for s in range(3)}
    b = {s: 100 * (349 + s) / 360 for s in range(3)}
    same = finding(a, b, "tolerant", "strict", "single", 2)
    assert same.no_spread and math.isnan(same.p) and math.isnan(same.low) and math.isnan(same.detectable)
    text = same.sentence()
    assert "no significant difference" not in text and "CI" not in text and "±0.00" not in text and "n/a" not in text
    assert "**the same difference on every seed**, +0.28 points on every one of the 3 seeds" in text
    assert "no t-test" in text and "sign test gives p 0.250" in text
    assert headline([same]) == ("Tolerant beat strict by the same +0.28 points on every one of the 3 seeds at "
                                "generation 2: no spread, so no t-test; sign test p 0.250, not significant with 3 seeds.")
    # 6 seeds of the same sign: the sign test is significant (p 0.031), and the verdict says which is better
    six = finding({s: 0.0 for s in range(6)}, {s: 0.5 for s in range(6)}, "tolerant", "strict", "single", 2)
    assert "tolerant is **worse** with 6 seeds, -0.50 points on every one of the 6 seeds" in six.sentence()
    assert "p 0.031" in six.sentence()
    assert headline([six]).startswith("Tolerant did worse than strict at generation 2 (-0.50 points on every one")
    # no difference on any seed: identical, nothing to test
    identical = finding(a, dict(a), "tolerant", "strict", "single", 2)
    assert "**identical on every one of the 3 seeds**" in identical.sentence()
    assert headline([identical]) == "Tolerant and strict scored the same on every one of the 3 seeds at generation 2."


def test_tables_say_when_every_seed_gives_the_same_difference():
    from kdgen.reporting.page import ceiling_note
    from kdgen.reporting.tables import diff_table, gains_table

    def top1(arm, g, s):  # strict: patriarch 97.22 + s; tolerant one image (0.28) better at generation 1, equal at 2
        return 97.0 + 100 * (1 + s) / 360 + (100 / 360 if arm == "tolerant" and g == 1 else 0.0) + 0.1 * g

    rows = [{"arm": arm, "generation": g, "kind": "single", "seed": s, "split": "test", "top1": top1(arm, g, s),
             "nll": 0.1 + 0.01 * s, "ece": 0.01} for arm in ("strict", "tolerant") for g in (0, 1, 2) for s in (0, 1, 2)]
    results = Results(rows)
    header, body = diff_table(results, "test")
    by_gen = {line[1]: dict(zip(header, line)) for line in body}
    assert by_gen["1"]["Δ top1 (points)"] == "+0.28 ± 0.00" and by_gen["1"]["p (paired t)"] == "0.250 (sign test)"
    assert by_gen["1"]["detectable (80 %)"] == "– (no spread)"
    assert by_gen["2"]["p (paired t)"] == "identical" and by_gen["2"]["detectable (80 %)"] == "– (no spread)"
    assert by_gen["1"]["p (NLL)"] == "identical"
    _, gains = gains_table(results, "test")
    assert [line[4] for line in gains if line[0] == "strict"] == ["0.250 (sign test)", "0.250 (sign test)"]
    # near the ceiling, with no comparison that has spread, the note still says why the run cannot show much
    note = ceiling_note(results, findings(results, "test"))
    assert note is not None and "no spread, so no t-test" in note and "±" not in note


def _rows(arms, generations=(0, 1, 2)):
    return [{"arm": arm, "generation": g, "kind": kind, "seed": s, "split": "test", "top1": float(s + g)}
            for arm in arms for g in generations for s in (0, 1, 2)
            for kind in (("single", "ensemble") if g == generations[-1] else ("single",))]


def test_findings_come_from_the_recorded_arms_main_rival_first():
    def labels(arms):
        return [(f.arm, f.other, f.kind, f.generation) for f in findings(Results(_rows(arms)))]

    # the headline arm (tolerant) first: against its main rival as single models and ensembles, against its
    # other rival as ensembles; then every other recorded arm the same way, in report order
    assert labels(("baseline", "strict", "tolerant")) == [
        ("tolerant", "strict", "single", 2), ("tolerant", "strict", "ensemble", 2), ("tolerant", "baseline", "ensemble", 2),
        ("strict", "baseline", "single", 2), ("strict", "baseline", "ensemble", 2)]
    # no name is written into the verdict: without tolerant, the first comparison is the headline
    found = findings(Results(_rows(("strict", "snapshot"))))
    assert [(f.arm, f.other, f.kind) for f in found] == [("snapshot", "strict", "single"), ("snapshot", "strict", "ensemble")]
    assert "snapshot and strict" in headline(found).lower()
    assert labels(("baseline",)) == [] and headline([]).startswith("No comparison yet")


def test_calibration_bins_golden_values():
    probs = torch.tensor([[0.9, 0.1], [0.62, 0.38], [0.22, 0.78], [0.85, 0.15]])
    bins = calibration_bins(probs, torch.tensor([0, 1, 1, 1]))
    nonzero = {i: (n, c, a) for i, (n, c, a) in enumerate(zip(bins["count"], bins["confidence"], bins["accuracy"])) if n}
    # bin b holds confidences in (b/15, (b+1)/15]: 0.62 -> 9, 0.78 -> 11, 0.85 -> 12, 0.9 -> 13
    assert nonzero == {9: (1, pytest.approx(0.62), 0.0), 11: (1, pytest.approx(0.78), 1.0),
                       12: (1, pytest.approx(0.85), 0.0), 13: (1, pytest.approx(0.9), 1.0)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def test_report_opens_with_the_verdict_and_is_self_contained(run):
    md = (run / "report.md").read_text()
    assert md.index("## Verdict") < md.index("![top1_test]") < md.index("## Test split") < md.index("## Val split")
    assert ("No significant difference between tolerant and strict with 3 seeds" in md or "beat strict" in md
            or "did worse than strict" in md or "Tolerant and strict scored the same on every one of the 3 seeds" in md)
    page = (run / "report.html").read_text()
    assert "src='plots/" not in page and page.count("src='data:image/png;base64,") >= 5
    assert "`" not in re.sub(r"<code>.*?</code>", "", page)  # no markdown left in the HTML
    for name in ("reliability_test.png", "confidence_test.png", "top1_test.png"):
        assert (run / "plots" / name).is_file()
    best = json.loads((run / "best.json").read_text())
    assert f"--which {best['arm']}/{best['seed']}/{best['generation']}" in page


def _browser():
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
                None)


CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const verdict = document.getElementById('verdict').getBoundingClientRect();
  const heights = Array.from(document.querySelectorAll('td')).map(td => td.getBoundingClientRect().height);
  document.title = JSON.stringify({images: images.length, broken: broken, verdict_top: verdict.top,
    verdict_bottom: verdict.bottom, screen: window.innerHeight, tallest_cell: Math.max(...heights),
    lowest_cell: Math.min(...heights)});
});
</script>"""


@pytest.mark.skipif(_browser() is None, reason="no Chromium on this machine (apt-get install chromium; .ci/run "
                                               "installs it when run as root)")
def test_report_in_headless_chromium_loads_every_image_and_shows_the_verdict_first(run, tmp_path):
    page = tmp_path / "report_checked.html"
    page.write_text((run / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--window-size=1280,900"]
    dom = subprocess.run([_browser(), *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r"<title>(\{.*?\})</title>", dom.stdout)
    assert found, dom.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert seen["images"] >= 5 and seen["broken"] == 0
    assert 0 <= seen["verdict_top"] and seen["verdict_bottom"] <= seen["screen"]  # the whole verdict, first screen
    assert seen["tallest_cell"] < 1.5 * seen["lowest_cell"]  # no cell wraps its number over two lines
    shot = tmp_path / "report_first_screen.png"
    subprocess.run([_browser(), *flags, f"--screenshot={shot}", (run / "report.html").as_uri()], capture_output=True,
                   timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_report_of_several_runs_is_one_comparison_page(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    rows = json.loads((other / "results.json").read_text())
    for row in rows["rows"]:  # a run where tolerant collapsed: its verdict must say so
        if row["arm"] in ("tolerant", "strict") and row["split"] == "test":
            row["top1"] = (10.0 + 0.5 * row["seed"]) if row["arm"] == "tolerant" else (90.0 + 0.2 * row["seed"])
    (other / "results.json").write_text(json.dumps(rows))
    out = tmp_path / "both"
    assert main(["report", str(run), str(other), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.count("**run**") == 1 and md.count("**other**") == 1
    assert "Tolerant did worse than strict" in md  # the second run's verdict, from its own numbers
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and (out / "plots" / "top1_test_runs.png").is_file()
    capsys.readouterr()
    assert main(["report", str(run), str(other)]) == 2  # several runs need --out
    assert "--out" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(out)]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_the_verdict_gives_the_exact_detectable_effect():
    # differences 1, 2, 3 (std 1, 3 seeds): the noncentral t's 80 % point is 3.264 (tests/test_statistics.py);
    # the old shortcut (t_0.975 + t_0.8) / sqrt(3) said 3.10
    found = finding({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0}, "tolerant", "strict", "single", 2)
    assert "would detect a true difference of ±3.26 points with 80 % power" in found.sentence()


def test_a_run_near_its_ceiling_says_why_it_cannot_show_much():
    from kdgen.reporting.page import ceiling_note

    def rows(level):
        return [{"arm": arm, "generation": g, "kind": "single", "seed": s, "split": "test",
                 "top1": level + 0.1 * ((s * 7 + g + len(arm)) % 5), "nll": 0.1, "ece": 0.01}
                for arm in ("strict", "tolerant") for g in (0, 1, 2) for s in (0, 1, 2)]

    near = Results(rows(99.2))
    note = ceiling_note(near, findings(near, "test"))
    assert note is not None and "ceiling" in note and "99." in note
    far = Results(rows(82.0))
    assert ceiling_note(far, findings(far, "test")) is None
    # a significant difference near the ceiling (tolerant about five images better) is a hint, not a finding
    shifted = Results([{**r, "top1": r["top1"] + (1.5 + 0.01 * r["seed"] if r["arm"] == "tolerant" else 0.0)}
                       for r in rows(99.2)])
    found = findings(shifted, "test")
    assert any(f.significant for f in found)
    hint = ceiling_note(shifted, found)
    assert hint is not None and "Near the ceiling" in hint and "hint" in hint


def test_data_note_says_which_splits_are_train_val_and_test():
    from kdgen.config import build_config
    from kdgen.reporting.page import data_note

    held_out = data_note(build_config({"data": {"name": "fashion-mnist", "val_fraction": 0.1, "train_per_class": 100}}))
    assert "10% of its training split, held out" in held_out and "100 images per class" in held_out
    own = data_note(build_config({"data": {"name": "hf", "root": "pets-hf", "val_split": "validation"}}))
    assert "pets-hf" in own and "own 'validation' split" in own and "test: its test split" in own


def test_a_sweep_page_says_when_every_seed_gives_the_same_difference():
    from kdgen.reporting.statistics import paired
    from kdgen.reporting.sweep_page import _diff

    assert _diff(paired({0: 1.5, 1: 2.5}, {0: 1.0, 1: 2.0})) == "+0.50 ± 0.00 (same on every seed, sign test p 0.500)"
    assert _diff(paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})) == "+0.00 ± 0.00 (identical on every seed)"
    assert _diff(paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})) == "+2.00 ± 1.00 (p 0.074)"
