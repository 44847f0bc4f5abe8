"""`hadmc report` / `compare`: the front table holds exactly the stored front with its marks and
splits; every embedded image decodes; the page is self-contained and says which split is which."""

from __future__ import annotations

import base64
import io
import re
import sqlite3
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from report_fixtures import known_run

from hadmc.errors import ConfigError
from hadmc.report import best_per_floor, render_report, training_chart, write_compare, write_report
from hadmc.results import load_results


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs: list[dict] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self.rows: dict[str, list[list[str]]] = {}
        self.row_attrs: dict[str, list[dict]] = {}
        self._table: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._table.append(a.get("id", ""))
            self.rows.setdefault(self._table[-1], [])
            self.row_attrs.setdefault(self._table[-1], [])
        elif tag == "tr" and self._table:
            self._row = []
            self.row_attrs[self._table[-1]].append(a)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.rows[self._table[-1]].append(self._row)
            self._row = None
        elif tag == "table" and self._table:
            self._table.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def known(tmp_path):
    return known_run(tmp_path / "known")


def _table(page: Page, name: str) -> list[dict[str, str]]:
    head, *rows = page.rows[name]
    return [dict(zip(head, r)) for r in rows]


def test_front_table_holds_exactly_the_stored_front_with_marks_and_splits(known):
    res = load_results(known.run_dir)
    page = Page(render_report(res))
    keys = [a["data-plan-key"] for a in page.row_attrs["front"] if "data-plan-key" in a]
    with sqlite3.connect(known.run_dir / "hadmc.db") as con:
        stored = {k for (k,) in con.execute("SELECT plan_key FROM pareto WHERE phase='final'")}
    assert set(keys) == stored == {known.original, known.accurate, known.fast}
    assert keys == [known.fast, known.accurate, known.original]  # fastest first: row n is point #n
    rows = _table(page, "front")
    assert [r["#"] for r in rows] == ["1", "2", "3"]
    assert {r["split"] for r in rows} == {"test"}
    fast, accurate, original = rows
    assert fast["top-1 %"] == "95.00M" and fast["latency ms"] == "0.500M" and fast["energy mJ"] == "-"
    assert accurate["latency ms"] == "1.000C" and accurate["energy mJ"] == "2.000E" and accurate["top-1 %"] == "97.50M"
    assert (fast["speedup"], accurate["speedup"], original["speedup"]) == ("10.0x", "5.0x", "1.0x")
    assert original["what"] == "original" and accurate["what"] == "best (searched)" and fast["what"] == "searched"
    assert fast["fidelity"].startswith("1.00")
    legend = re.search(r'<ul class="legend">(.*?)</ul>', render_report(res)).group(1)
    assert "measured on the target" in legend and "reused" in legend and "estimated" in legend


def test_best_plan_per_floor_is_the_fastest_within_the_floor_with_its_measured_speedup(known):
    res = load_results(known.run_dir)
    rows = {r["floor_pt"]: r for r in best_per_floor(res)}
    assert rows[0.0]["searched"] is None and rows[0.25]["searched"] is None  # the only plans lose 0.5 and 3 points
    assert rows[1.0]["searched"].plan_key == known.accurate and rows[1.0]["searched_speedup"] == pytest.approx(5.0)
    table = _table(Page(render_report(res)), "best")
    assert [r["fastest searched plan"] for r in table][:2] == ["none", "none"]
    assert table[2]["speedup"] == "5.0x" and table[2]["top-1 %"] == "97.50M"


def test_every_embedded_image_decodes_and_equals_its_png_file(known, tmp_path):
    res = load_results(known.run_dir)
    files = write_report(res, tmp_path / "out" / "r.html")
    text = files.html.read_text()
    page = Page(text)
    names = {p.stem: p for p in files.pngs}
    assert {i["data-chart"] for i in page.imgs} == set(names) == {"front_latency", "front_energy", "front_size", "hypervolume", "decisions"}
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png == names[img["data-chart"]].read_bytes()
        im = Image.open(io.BytesIO(png))
        im.load()
        assert im.size[0] > 300 and im.size[1] > 200
        assert int(img["data-points"]) > 0 and img["alt"]
        assert np.unique(np.asarray(im.convert("L"))).size > 10  # something was drawn


def test_page_is_self_contained_and_says_which_split_each_figure_comes_from(known):
    res = load_results(known.run_dir)
    text = render_report(res)
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert {"phases", "best-plans", "fronts", "hypervolume", "decisions", "front-table", "front", "settings"} <= page.ids
    header = re.search(r'<table class="facts">(.*?)</table>', text).group(1)
    for fact in ("model", "data", "target", "searcher", "budget", "wall time", "predicted episodes", "original (test split)"):
        assert f"<th>{fact}</th>" in header
    assert "2m03s" in header and "ort-cpu" in header and "random" in header
    note = re.search(r'<p class="note" id="phases">(.*?)</p>', text).group(1)
    assert "validation split" in note and "test split at full fidelity" in note and "0.25" in note
    settings = _table_rows(page, "settings")
    assert "cpu-test-epyc" in settings["device"] and "threads=1" in settings["latency probe settings"]
    assert "onnxruntime 1.31.0" in settings["versions"]


def _table_rows(page: Page, name: str) -> dict[str, str]:
    return {r[0]: r[1] for r in page.rows[name]}


def test_ppo_training_curves_use_sb3_names_and_say_they_come_from_predicted_episodes(known):
    import dataclasses

    res = load_results(known.run_dir)
    curves = [{"step": 100.0 * i, "rollout/ep_rew_mean": 0.1 * i, "train/approx_kl": 0.01, "train/value_loss": 1.0 / (i + 1)} for i in range(5)]
    ppo = dataclasses.replace(res, curves=curves, meta={**res.meta, "searcher": "ppo", "agent_mode": "dyna", "predicted_episodes": 640})
    chart = training_chart(ppo)
    assert chart is not None and chart.points == 15
    text = render_report(ppo)
    assert 'data-chart="training"' in text and "640 predicted episodes" in text and "never a measurement" in text


def test_handmade_plans_of_a_run_are_marked_and_kept_apart_from_searched_ones(tmp_path):
    from search_fixtures import chain, config, surrogate_run

    from hadmc.handmade import evaluate_handmade, uniform_plans

    run = surrogate_run(config("random", budget=8, run_dir=tmp_path / "run"))
    try:
        run.search()
        run.finalize()
        plans = uniform_plans(run, ratios=(0.0, 0.5, 0.9))
        evaluate_handmade(run, plans)
    finally:
        run.close()
    assert set(plans) == {f"uniform {r}% {p}" for r in (0, 50, 90) for p in ("fp32", "int8")} | {
        "uniform 50% int8, ends fp32", "uniform 90% int8, ends fp32"
    }
    ends = plans["uniform 90% int8, ends fp32"]
    names = [g.name for g in chain()]
    assert [ends.decision_for(n).precision for n in names] == ["fp32"] + ["int8"] * (len(names) - 2) + ["fp32"]
    assert [ends.decision_for(g.name).prune_ratio for g in chain()] == [0.9 if g.prunable else 0.0 for g in chain()]
    res = load_results(tmp_path / "run")
    assert res.groups == [g.name for g in chain()]  # recorded by the run, in network order
    assert sorted(res.handmade.values()) == sorted(plans)
    assert {e.plan_key for e in res.handmade_evaluations()} == set(res.handmade)
    assert not {e.plan_key for e in res.searched()} & set(res.handmade)
    files = write_report(res)
    page = Page(files.html.read_text())
    what = {r["what"] for r in _table(page, "front")}
    on_front = {f"hand-made: {res.handmade[k]}" for k in res.front_keys if k in res.handmade}
    assert on_front and on_front <= what
    assert "fastest hand-made plan" in page.rows["best"][0]
    assert "training" not in {i["data-chart"] for i in page.imgs}  # random searcher: no agent


def test_compare_overlays_runs_with_one_hypervolume_line_each(known, tmp_path):
    other = known_run(tmp_path / "other")
    files = write_compare([load_results(known.run_dir), load_results(other.run_dir)], tmp_path / "cmp.html")
    page = Page(files.html.read_text())
    assert len(page.rows["runs-table"]) == 3
    assert {i["data-chart"] for i in page.imgs} == {"hypervolume", "fronts_latency", "fronts_size"}
    assert all(int(i["data-points"]) > 0 for i in page.imgs)
    with pytest.raises(ConfigError, match="at least two"):
        write_compare([load_results(known.run_dir)], tmp_path / "one.html")


def test_a_folder_that_is_not_a_finished_run_gives_a_clear_error(tmp_path, known):
    with pytest.raises(ConfigError, match="does not exist"):
        load_results(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no hadmc.db"):
        load_results(tmp_path / "empty")
    (known.run_dir / "pareto.json").unlink()
    with pytest.raises(ConfigError, match="has not finished.*--resume"):
        load_results(known.run_dir)


def test_speedup_is_the_interleaved_ratio_where_a_plan_has_one_as_hadmc_compress_prints_it():
    from report_fixtures import evaluation, plan

    from hadmc.plan import CompressionPlan
    from hadmc.results import speedup

    original = evaluation(CompressionPlan.uniform(0.0, "fp32", budget=0), "final", 0.98, 6.6, 4_000_000)
    timed = evaluation(plan((0.5, 0.5), "int8"), "final", 0.98, 0.461, 1_000_000).model_copy(update={"latency_ratio": 1 / 15.7})
    assert speedup(original, timed) == pytest.approx(15.7)  # the medians alone would say 14.3x
    assert speedup(original, timed.model_copy(update={"latency_ratio": None})) == pytest.approx(6.6 / 0.461)
    assert speedup(original, timed, latency=lambda e: e.latency_ms) == pytest.approx(6.6 / 0.461)  # asked for medians


def test_search_fidelity_says_when_narrow_or_partly_trained_students_ran_more_of_their_recovery(known):
    import dataclasses

    res = load_results(known.run_dir)
    search = dict(res.config.get("search", {}))
    search.pop("fidelity_scope", None)  # a run from before the scope rule
    search.pop("fidelity_lr", None)  # and before the learning-rate setting
    search.pop("fidelity_temperature", None)  # and before the temperature cap
    search.pop("fidelity_alpha", None)  # and before the distillation-weight cap
    search.pop("fidelity_batch_size", None)  # and before the search batch size
    search.pop("fidelity_batch_share", None)  # and before its share
    search.pop("fidelity_full_scope", None)  # and before whole-model search recoveries
    plain = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.25, "fidelity_macs_ref": 0.0}})
    assert plain.fidelity_text == "0.25 of each plan's recovery"
    ruled = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.2, "fidelity_macs_ref": 0.5}})
    assert ruled.fidelity_text == "0.2 of each plan's recovery, more for students under 0.5 of the original's MACs"
    scoped = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.15, "fidelity_macs_ref": 0.4, "fidelity_scope": True}})
    assert scoped.fidelity_text == "0.15 of each plan's recovery, more for students under 0.4 of the original's MACs, more for plans that train part of the model"
    fast = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.15, "fidelity_macs_ref": 0.4, "fidelity_lr": 3.0}})
    assert fast.fidelity_text == "0.15 of each plan's recovery, more for students under 0.4 of the original's MACs, shortened recoveries at 3x the learning rate"
    capped = dataclasses.replace(fast, config={**fast.config, "search": {**fast.config["search"], "fidelity_temperature": 4.0}})
    assert capped.fidelity_text == (
        "0.15 of each plan's recovery, more for students under 0.4 of the original's MACs, shortened recoveries at 3x the learning rate distilling at T <= 4"
    )
    cool = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.15, "fidelity_macs_ref": 0.0, "fidelity_temperature": 4.0}})
    assert cool.fidelity_text == "0.15 of each plan's recovery, shortened recoveries distilling at T <= 4"
    weighed = dataclasses.replace(capped, config={**capped.config, "search": {**capped.config["search"], "fidelity_alpha": 0.3}})
    assert weighed.fidelity_text == capped.fidelity_text + ", distillation weight alpha <= 0.3"
    light = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.15, "fidelity_macs_ref": 0.0, "fidelity_alpha": 0.3}})
    assert light.fidelity_text == "0.15 of each plan's recovery, shortened recoveries at distillation weight alpha <= 0.3"
    small = dataclasses.replace(weighed, config={**weighed.config, "search": {**weighed.config["search"], "fidelity_batch_size": 32}})
    assert small.fidelity_text == weighed.fidelity_text + ", in batches of 32"
    batched = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 0.15, "fidelity_macs_ref": 0.0, "fidelity_batch_size": 32}})
    assert batched.fidelity_text == "0.15 of each plan's recovery, shortened recoveries in batches of 32"
    shared = dataclasses.replace(batched, config={**batched.config, "search": {**batched.config["search"], "fidelity_batch_share": 0.5}})
    assert shared.fidelity_text == batched.fidelity_text + " below 0.5 of the plan's steps"
    whole = dataclasses.replace(shared, config={**shared.config, "search": {**shared.config["search"], "fidelity_full_scope": True}})
    assert whole.fidelity_text == shared.fidelity_text + ", shortened recoveries training the whole model"
    note = re.search(r'<p class="note" id="phases">(.*?)</p>', render_report(ruled)).group(1)
    assert "more for students under 0.5 of the original's MACs" in note
    full = dataclasses.replace(res, config={**res.config, "search": {**search, "fidelity": 1.0, "fidelity_macs_ref": 0.5}})
    assert full.fidelity_text == "1 of each plan's recovery"
