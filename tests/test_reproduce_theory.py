"""experiments.reproduce: theory tables reproduce the published values, figures, errors, headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments import reproduce, tables, theory_tables
from reference_values import PUBLISHED_ETA_SWEEP_101, PUBLISHED_TAT

# The published values (tests/reference_values.py, kept independently of the copy in
# experiments/theory_tables.py, which is checked against them below).
REFERENCE_TAT_ETA_09 = PUBLISHED_TAT
REFERENCE_ETA_SWEEP_101 = PUBLISHED_ETA_SWEEP_101

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, int, list[str]]:
    """Runs tat_depth and eta_sweep (quick) once through the command line entry point."""
    workdir = tmp_path_factory.mktemp("theory")
    argv = ["--table=tat_depth,eta_sweep", f"--workdir={workdir}", "--quick",
            f"--write_index={workdir / 'index' / 'results.md'}"]
    return workdir, reproduce.main(argv), argv


def _table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table whose header starts with the text."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| " + header_start):
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append([cell.strip() for cell in body.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table with header {header_start!r}")


def _significant_digits_agree(value: float, reference: float, digits: int) -> bool:
    scale = 10.0 ** (int(f"{abs(reference):e}".split("e")[1]) - digits + 1)
    return abs(value - reference) <= 0.5 * scale


def test_published_copies_match_reference():
    assert {d: tuple(map(float, v)) for d, v in theory_tables.PUBLISHED_TAT_ETA_09.items()} == \
        REFERENCE_TAT_ETA_09
    assert {e: float(v) for e, v in theory_tables.PUBLISHED_ETA_SWEEP_101.items()} == \
        REFERENCE_ETA_SWEEP_101


def test_run_succeeds_and_writes_files(quick_run):
    workdir, rc, _ = quick_run
    assert rc == 0
    for name in ("tat_depth", "eta_sweep"):
        assert (workdir / f"{name}.md").is_file()
        assert (workdir / f"{name}.json").is_file()


def test_tat_depth_reproduces_published_values(quick_run):
    workdir, _, _ = quick_run
    text = (workdir / "tat_depth.md").read_text()
    rows = _table_rows(text, "network | L |")
    found = {}
    for row in rows:
        depth = int(re.fullmatch(r"ResNet-(\d+)", row[0]).group(1))
        # Columns: network, L, a, published a, diff, scale, published scale, diff, matches, ...
        found[depth] = (float(row[2]), float(row[5]))
        assert row[3] == f"{REFERENCE_TAT_ETA_09[depth][0]:.10f}"
        assert row[8] == "yes"
    assert set(found) == set(REFERENCE_TAT_ETA_09)
    for depth, (slope, scale) in found.items():
        ref_slope, ref_scale = REFERENCE_TAT_ETA_09[depth]
        # Published with 10 decimals: at least 9 significant digits must agree (8+ required).
        assert _significant_digits_agree(slope, ref_slope, 9), (depth, slope, ref_slope)
        assert _significant_digits_agree(scale, ref_scale, 9), (depth, scale, ref_scale)
        assert abs(slope - ref_slope) < 6e-11 and abs(scale - ref_scale) < 6e-11


def test_tat_depth_shows_unreachable_rows(quick_run):
    workdir, _, _ = quick_run
    rows = _table_rows((workdir / "tat_depth.md").read_text(), "L | negative slope")
    by_depth = {int(r[0]): r for r in rows}
    assert "unreachable" in by_depth[10][1]
    assert float(by_depth[49][1]) == pytest.approx(REFERENCE_TAT_ETA_09[50][0], abs=6e-11)


def test_eta_sweep_reproduces_published_values(quick_run):
    workdir, _, _ = quick_run
    rows = _table_rows((workdir / "eta_sweep.md").read_text(), "eta | negative slope")
    found = {float(r[0]): r for r in rows}
    assert set(found) == set(REFERENCE_ETA_SWEEP_101)
    for eta, row in found.items():
        slope = float(row[1])
        published = REFERENCE_ETA_SWEEP_101[eta]
        decimals = len(theory_tables.PUBLISHED_ETA_SWEEP_101[eta].split(".")[1])
        assert abs(slope - published) <= 0.5 * 10.0**-decimals + 1e-12, (eta, slope)
        assert row[4] == "yes"
    # The eta = 0.9 row against the 10-decimal published value (9+ significant digits).
    slope_09 = float(found[0.9][1])
    assert float(found[0.9][5]) == REFERENCE_TAT_ETA_09[101][0]
    assert _significant_digits_agree(slope_09, REFERENCE_TAT_ETA_09[101][0], 9)


def test_figures_are_valid_png_and_referenced(quick_run):
    workdir, _, _ = quick_run
    for name in ("tat_depth", "eta_sweep"):
        text = (workdir / f"{name}.md").read_text()
        linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        pngs = sorted(workdir.glob(f"{name}_*.png"))
        assert pngs, name
        assert sorted(linked) == sorted(p.name for p in pngs)
        for png in pngs:
            data = png.read_bytes()
            assert len(data) > 1000 and data[:8] == PNG_MAGIC, png
            assert png.stat().st_size < 300_000  # small enough to commit


def test_header_states_command_machine_date(quick_run):
    workdir, _, argv = quick_run
    for name in ("tat_depth", "eta_sweep"):
        lines = (workdir / f"{name}.md").read_text().splitlines()
        assert lines[0].startswith("# ") and f"(`{name}`)" in lines[0]
        head = "\n".join(lines[:8])
        assert f"- Command: `{tables.command_line(argv)}`" in head
        assert "python -m experiments.reproduce --table=tat_depth,eta_sweep" in head
        assert "--quick" in head
        assert re.search(r"- Machine: node `[^`]*`, processor `[^`]+`, \d+ CPUs", head)
        assert re.search(r"- Date: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00; wall time: [\d.]+ s; "
                         r"mode: quick", head)


def test_index_gathers_tables_with_relinked_figures(quick_run):
    workdir, _, _ = quick_run
    index = (workdir / "index" / "results.md").read_text()
    assert index.startswith("# dks_jax: reproduced results")
    assert "## TAT Leaky ReLU (eta 0.9)" in index
    assert "](../tat_depth_slope.png)" in index and "](../eta_sweep_slope.png)" in index
    assert "`dks_params`" in index and "not generated yet" in index
    # The hint names the table folder as it was given (not relative to the index).
    assert f"--table=dks_params --workdir={workdir.as_posix()}`" in index


def test_unknown_table_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(tables.UnknownTableError) as err:
        tables.resolve(["no_such_table"])
    message = str(err.value)
    assert "no_such_table" in message
    for valid in ("tat_depth", "eta_sweep", "dks_params", "cmaps", "all_theory", "all"):
        assert valid in message
    from experiments import cli
    with pytest.raises(cli.UsageError, match="Unknown table 'no_such_table'.*tat_depth"):
        reproduce.main(["--table=tat_depth,no_such_table", f"--workdir={tmp_path}"])
    assert not list(tmp_path.iterdir())  # nothing ran


def test_list_and_groups(capsys):
    assert reproduce.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("tat_depth", "eta_sweep", "dks_params", "cmaps", "all_theory"):
        assert name in out
    assert [s.name for s in tables.resolve(["all_theory"])] == ["tat_depth", "eta_sweep",
                                                               "dks_params", "cmaps"]


def test_registering_a_table(tmp_path):
    """A plug-in table: registered by decorator, run by the command, its figure checked."""

    @tables.register_table("zz_dummy", group="dummy", title="A dummy table")
    def dummy(workdir: Path, quick: bool) -> tables.TableResult:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        path = tables.save_figure(fig, workdir / "zz_dummy_line.png")
        body = tables.markdown_table(["quick"], [[quick]]) + "\n\n" + tables.figure_link(path, "x")
        return tables.TableResult(body, [path], {"quick": quick})

    try:
        with pytest.raises(ValueError, match="already registered"):
            tables.register_table("zz_dummy", group="dummy", title="again")(lambda w, q: None)
        with pytest.raises(ValueError, match="reserved"):
            tables.register_table("all_things", group="dummy", title="bad")
        (tmp_path / "zz_dummy_stale.png").write_bytes(PNG_MAGIC)
        assert reproduce.main(["--table=all_dummy", f"--workdir={tmp_path}", "--quick"]) == 0
        text = (tmp_path / "zz_dummy.md").read_text()
        assert "| True |" in text and "![x](zz_dummy_line.png)" in text
        assert not (tmp_path / "zz_dummy_stale.png").exists()  # stale figures are removed
    finally:
        tables.unregister_table("zz_dummy")
