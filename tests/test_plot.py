"""`picolm plot` and the figures of a finished run: the loss of any runs overlaid, the SFT-monitor and DPO-rewards
panels for the runs that logged those metrics, and the same figures in TensorBoard as `figures/*`."""

import json
import shutil

import pytest

from picolm.analysis.curves import read_histories, run_figures
from picolm.cli import main
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--train.batch_size", "8", "--train.eval_every", "2", "--train.eval_batches", "2", "--train.log_every", "1",
        "--train.warmup_steps", "1", "--train.max_steps", "4", "--train.num_samples", "0", "--train.lr", "1e-3",
        "--train.device", "cpu", "--log.progress", "false", "--log.backends", "tensorboard"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny story model, SFT from it with the monitor on held-out pairs, and DPO from that: each trained through
    `picolm train` with TensorBoard on."""
    root = tmp_path_factory.mktemp("plot")
    quiet = lambda *a: None  # noqa: E731
    prepare(PrepareOptions(source="stories", out=str(root / "stories"), num_sequences=300, vocab_size=512), log=quiet)
    prepare(PrepareOptions(source="horror-sft", out=str(root / "sft-data"), num_sequences=40), log=quiet)
    prepare(PrepareOptions(source="horror-dpo", out=str(root / "dpo-data"), num_sequences=40), log=quiet)
    model = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "256"]
    assert main(["train", "--data", str(root / "stories"), "--out", str(root / "base"), *model, *TINY]) == 0
    assert main(["train", "--data", str(root / "sft-data"), "--init-from", str(root / "base"), "--out",
                 str(root / "sft"), "--objective.monitor", str(root / "dpo-data"), *TINY]) == 0
    assert main(["train", "--data", str(root / "dpo-data"), "--init-from", str(root / "sft"), "--out",
                 str(root / "dpo"), *TINY]) == 0
    return root


def rows(run, name):
    """(step, value) of one metric, read straight from the run's metrics.jsonl."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[name]) for r in lines if name in r]


def lines_of(ax):
    return {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}


def test_a_finished_run_writes_its_figures_to_tensorboard_and_plots(runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, figures in (("base", ["figures/loss"]), ("sft", ["figures/loss", "figures/post_training"]),
                          ("dpo", ["figures/loss", "figures/post_training"])):
        events = EventAccumulator(str(runs / name / "tensorboard"), size_guidance={"images": 0}).Reload()
        assert sorted(events.Tags()["images"]) == figures, name
        assert "train/loss" in events.Tags()["scalars"]  # the scalars written while training are all still there
        for tag in figures:
            image, = events.Images(tag)
            assert image.step == 4 and image.encoded_image_string[:8] == PNG and image.width > image.height > 300
        assert sorted(p.name for p in (runs / name / "plots").iterdir()) == [f"{t[8:]}.png" for t in figures]


def test_plot_overlays_the_runs_and_gives_each_panel_the_runs_that_logged_its_metrics(runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", *(str(runs / name) for name in ("base", "sft", "dpo")), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out / "loss.png"), "wrote", str(out / "post_training.png")]
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "post_training.png"]
    assert all((out / name).read_bytes()[:8] == PNG for name in ("loss.png", "post_training.png"))

    figures = run_figures(read_histories([runs / "base", runs / "sft", runs / "dpo"]), "loss")
    loss, = figures["loss"].axes
    curves = lines_of(loss)
    for name in ("base", "sft", "dpo"):  # each run's validation loss, exactly as it logged it
        assert curves[name] == rows(runs / name, "val/loss")
    assert len({line.get_color() for line in loss.get_lines()}) == 3
    monitor, rewards = figures["post_training"].axes
    assert lines_of(monitor) == {"sft: chosen": rows(runs / "sft", "monitor/logps/chosen"),
                                 "sft: rejected": rows(runs / "sft", "monitor/logps/rejected")}
    assert lines_of(rewards) == {"dpo: chosen, train": rows(runs / "dpo", "rewards/chosen"),
                                 "dpo: rejected, train": rows(runs / "dpo", "rewards/rejected"),
                                 "dpo: chosen, validation": rows(runs / "dpo", "val/rewards/chosen"),
                                 "dpo: rejected, validation": rows(runs / "dpo", "val/rewards/rejected")}


def test_several_sft_runs_share_the_monitor_panel_and_a_dpo_run_alone_gets_one_panel(runs, tmp_path):
    shutil.copytree(runs / "sft", tmp_path / "sft-again")
    figures = run_figures(read_histories([runs / "sft", tmp_path / "sft-again"]), "loss")
    monitor, = figures["post_training"].axes
    assert sorted(lines_of(monitor)) == ["sft-again: chosen", "sft-again: rejected", "sft: chosen", "sft: rejected"]
    assert len({line.get_color() for line in monitor.get_lines()}) == 2  # one colour per run
    rewards, = run_figures(read_histories([runs / "dpo"]), "loss")["post_training"].axes
    assert rewards.get_title().startswith("DPO")


def test_a_run_with_neither_metric_gets_only_the_loss_figure(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "base"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'out' / 'loss.png'}"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["loss.png"]
    curves = lines_of(run_figures(read_histories([runs / "base"]), "base: loss")["loss"].axes[0])
    assert curves["train"] == rows(runs / "base", "train/loss") and curves["validation"] == rows(runs / "base",
                                                                                                 "val/loss")


def test_a_path_that_is_not_a_run_gets_one_line_naming_it(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "base"), str(runs / "stories"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(runs / "stories") in err and "not a run directory" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
