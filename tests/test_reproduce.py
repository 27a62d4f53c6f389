"""pdist.reproduce: every paper file under experiments/papers/ keeps its contract and runs in its
tiny mode (so the files cannot rot); the report (table, reproduce.json, REPRODUCTIONS.md) judges
claims by their range and says what the paper published."""

import glob
import json
import math
import os
import textwrap

import pytest

from conftest import ROOT
from pdist import config as config_lib
from pdist import reproduce, train

PAPERS = sorted(os.path.basename(p)[:-3]
                for p in glob.glob(os.path.join(ROOT, "experiments", "papers", "*.py")))
# tiny runs that take a few seconds run in `make test`; the others (10-70 s each on 2 cores,
# mostly compilation) in `make test-all`, which runs every paper's tiny mode
QUICK = {"chen2016_backup_workers", "zhang2016_staleness"}
REQUIRE_PUBLISHED = True


@pytest.mark.parametrize("name", PAPERS)
def test_paper_keeps_its_contract(name):
  """PAPER, SEEDS >= 3, CLAIMS with name/claim/metric/low/high/published, a docstring naming its
  command (cheap: every paper, in every test run)."""
  module, _ = config_lib.load_experiment(os.path.join(reproduce.PAPERS, f"{name}.py"))
  assert isinstance(module.PAPER, str) and module.PAPER
  assert f"python -m pdist.reproduce --only {name}" in (module.__doc__ or "")
  assert module.SEEDS >= 3
  names = [c["name"] for c in module.CLAIMS]
  assert names and len(set(names)) == len(names)
  for claim in module.CLAIMS:
    for key in reproduce.CLAIM_KEYS:
      assert key in claim, (name, claim.get("name"), key)
    assert claim["low"] <= claim["high"], claim["name"]
    if REQUIRE_PUBLISHED or "published" in claim:
      assert isinstance(claim.get("published"), str) and claim["published"], claim["name"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.long)
                                  for n in PAPERS])
def test_paper_runs_tiny(name, tmp_path):
  """run(tiny=True) returns one value per seed per claim (tiny may run fewer seeds than SEEDS,
  at least one, the same for every claim) and draws figure.png."""
  module, _ = config_lib.load_experiment(os.path.join(reproduce.PAPERS, f"{name}.py"))
  measured = module.run(str(tmp_path), True, train, config_lib, ROOT)
  seeds = {len(measured[claim["name"]]) for claim in module.CLAIMS}
  assert len(seeds) == 1 and 1 <= min(seeds) <= module.SEEDS, {
      c["name"]: len(measured[c["name"]]) for c in module.CLAIMS}
  for claim in module.CLAIMS:
    values = measured[claim["name"]]
    assert all(isinstance(float(v), float) and not math.isnan(float(v)) for v in values), values
  assert os.path.getsize(tmp_path / "figure.png") > 1000


FAKE = '''
"""A fake paper. python -m pdist.reproduce --only {name}"""
import os
PAPER = "Nobody {name}"
SEEDS = 3
CLAIMS = [
    {{"name": "holds", "claim": "a claim whose every word must reach the printed table even "
      "when it is much longer than one line of it", "metric": "x", "low": 1.5, "high": 2.5,
      "published": "2 (Table 1, p. 3)"}},
    {{"name": "misses", "claim": "a claim pdist misses", "metric": "y", "low": 10,
      "high": float("inf")}},
]

def run(workdir, tiny, train, config_lib, root):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "figure.png"), "wb") as f:
    f.write(b"png of {name}")
  return {{"holds": [1.0, 2.0, 3.0], "misses": [1.0, 1.0, 1.0]}}
'''


def test_report_judges_claims_and_writes_the_markdown(tmp_path, monkeypatch, capsys):
  assert reproduce.verdict([1.0, 3.0], 1.5, 2.5) == {
      "mean": 2.0, "std": 1.0, "seeds": 2, "values": [1.0, 3.0], "passed": True}
  assert not reproduce.verdict([1.0, 1.2], 1.5, 2.5)["passed"]
  papers = tmp_path / "papers"
  papers.mkdir()
  for name in ("nobody2098", "nobody2099"):
    (papers / f"{name}.py").write_text(textwrap.dedent(FAKE.format(name=name)))
  monkeypatch.setattr(reproduce, "PAPERS", str(papers))
  work, md = tmp_path / "work", tmp_path / "repo" / "REPRODUCTIONS.md"
  md.parent.mkdir()
  assert reproduce.main(["--workdir", str(work), "--markdown", str(md)]) == 1   # a claim fails
  rows = json.load(open(work / "reproduce.json"))
  assert [(r["paper"], r["name"], r["passed"]) for r in rows] == [
      ("nobody2098", "holds", True), ("nobody2098", "misses", False),
      ("nobody2099", "holds", True), ("nobody2099", "misses", False)]
  assert rows[0]["mean"] == pytest.approx(2.0) and rows[0]["seeds"] == 3
  out = capsys.readouterr().out
  for r in rows:   # every claim's every word is in the table (long claims wrap, never cut)
    assert all(word in out.split() for word in r["claim"].split()), r["claim"]
  assert "pass" in out and "FAIL" in out
  for text, figure in ((md.read_text(), "docs/reproductions/nobody2099.png"),
                       ((work / "REPRODUCTIONS.md").read_text(), "nobody2099/figure.png")):
    assert "machine: " in text and "total: " in text and "2 pass, 2 fail" in text
    assert "| 2 (Table 1, p. 3) | [1.5, 2.5] | 2 ± 0.82 (3) | pass |" in text
    assert "| — | >= 10 | 1 ± 0 (3) | **fail** |" in text     # no published number: a dash
    assert "`python -m pdist.reproduce --only nobody2098`" in text
    assert f"![nobody2099]({figure})" in text
  assert (md.parent / "docs" / "reproductions" / "nobody2099.png").read_bytes() == (
      b"png of nobody2099")
  assert sorted(p.name for p in (md.parent / "docs" / "reproductions").iterdir()) == [
      "nobody2098.png", "nobody2099.png", "reproductions.json"]
  # --only replaces the named paper's section and keeps the others; a paper whose file is gone
  # leaves the report
  assert reproduce.main(["--workdir", str(work), "--markdown", str(md), "--only",
                         "nobody2099"]) == 1
  assert md.read_text().count("## nobody2098") == 1 and md.read_text().count("## nobody2099") == 1
  (papers / "nobody2098.py").unlink()
  assert reproduce.main(["--workdir", str(work), "--markdown", str(md), "--only",
                         "nobody2099"]) == 1
  assert "nobody2098" not in md.read_text()
  assert not (md.parent / "docs" / "reproductions" / "nobody2098.png").exists()
  # --tiny never writes the real report, and passes whatever its numbers
  before = md.read_text()
  assert reproduce.main(["--tiny", "--workdir", str(work), "--markdown", str(md)]) == 2
  assert reproduce.main(["--tiny", "--workdir", str(work)]) == 0
  assert md.read_text() == before
  assert "`--tiny` run" in (work / "REPRODUCTIONS.md").read_text()
  assert reproduce.main(["--only", "nobody2097"]) == 2
