"""Data-parallel training through the shared engine: two gloo processes on CPU, sharding, the launcher."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.networks.nets import BasicUNet
from torch import nn
from torch.utils.data import RandomSampler

from eqmar.engines import (
    EQRegSettings,
    ShardedSampler,
    TaskSpec,
    add_distributed_arguments,
    build_trainer,
    launch,
    loss_terms,
    run_arms,
)
from eqmar.engines.distributed import resolve_backend
from eqmar.equivariance import convs_divisible_by
from tests.helpers import ROOT, TINY_TAG, make_tiny_syndeeplesion

SETTINGS = EQRegSettings(weight=1e-3, layers=convs_divisible_by("C4"), elements=[1, 2, 3])
SEED = 3


def _network() -> nn.Module:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4))


def _data(count: int = 8) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(1, 32, 32, generator=gen), "label": torch.rand(1, 32, 32, generator=gen), "index": i}
        for i in range(count)
    ]


def _train_with_build_trainer(records: dict[str, Any]) -> None:
    """Two epochs of the eqreg arm (global batch 4 of 8 samples); record draws, terms and each rank's samples."""
    torch.manual_seed(0)
    network = _network()
    records["initial"] = {k: v.clone() for k, v in network.state_dict().items()}
    loader = DataLoader(_data(), batch_size=4, shuffle=True)
    trainer = build_trainer(
        network, loader, torch.optim.Adam(network.parameters(), 1e-2), nn.MSELoss(), max_epochs=2,
        arm="eqreg", settings=SETTINGS, seed=SEED, progress=False,
    )
    eqreg, draws = trainer.eqmar_arm.eqreg, records.setdefault("draws", [])
    draw = eqreg.draw_element
    eqreg.draw_element = lambda: draws.append(draw()) or draws[-1]
    indices, terms = records.setdefault("indices", []), records.setdefault("terms", [])
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: indices.append(e.state.batch["index"].tolist()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(loss_terms(e.state.output)["eq_reg"]))
    trainer.run()
    records["ddp"] = isinstance(trainer.network, nn.parallel.DistributedDataParallel)
    records["weights"] = network.state_dict()


def _train_with_run_arms(out: Path, records: dict[str, Any]) -> None:
    """run_arms with files, then resumed for one more epoch from rank 0's checkpoint."""
    probe = DataLoader(_data(2), batch_size=2)
    batch = next(iter(probe))

    def evaluate(network: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(network(batch["image"]), batch["label"]))}

    task = TaskSpec(
        make_network=_network, make_optimizer=lambda net: (torch.optim.Adam(net.parameters(), 1e-2), None),
        loss_function=nn.MSELoss(), train_loader=DataLoader(_data(), batch_size=4, shuffle=True),
        evaluate=evaluate, max_epochs=1,
    )
    first = run_arms(task, ["eqreg"], SETTINGS, seed=SEED, output_dir=out, progress=False)["eqreg"]
    resumed = run_arms(replace(task, max_epochs=2), ["eqreg"], SETTINGS, seed=SEED, output_dir=out, resume=True,
                       progress=False)["eqreg"]
    records["arms"] = {
        "iterations": [first.iterations, resumed.iterations], "metrics": resumed.metrics,
        "final_loss": resumed.final_loss, "weights_file": str(resumed.weights),
        "weights_file_exists": resumed.weights.exists(), "weights": resumed.network.state_dict(),
    }


def _two_rank_worker(local_rank: int, out: Path) -> str:
    records: dict[str, Any] = {"rank": idist.get_rank(), "world_size": idist.get_world_size()}
    _train_with_build_trainer(records)
    _train_with_run_arms(out / "arms", records)
    torch.save(records, out / f"rank{records['rank']}.pt")
    return f"rank {records['rank']} done"


def test_two_gloo_processes_train_identical_weights_with_identical_draws(tmp_path) -> None:
    """The issue's check: 2 gloo processes, the eqreg arm, identical weights and group elements on both ranks."""
    assert launch(_two_rank_worker, 2, "gloo", tmp_path) == "rank 0 done"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["world_size"], r1["world_size"], r0["ddp"], r1["ddp"]) == (2, 2, True, True)

    weights0, weights1 = r0["weights"], r1["weights"]
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    assert not all(torch.equal(weights0[k], r0["initial"][k]) for k in weights0)
    assert len(r0["draws"]) == 4 and r0["draws"] == r1["draws"]
    assert len(r0["terms"]) == len(r1["terms"]) == 4 and min(r0["terms"] + r1["terms"]) > 0

    # Each rank loads half the global batch of 4; together the ranks cover every sample once per epoch,
    # and set_epoch gives the second epoch another order.
    for step0, step1 in zip(r0["indices"], r1["indices"], strict=False):
        assert len(step0) == len(step1) == 2 and not set(step0) & set(step1)
    for epoch in (slice(0, 2), slice(2, 4)):
        assert sorted(sum(r0["indices"][epoch] + r1["indices"][epoch], [])) == list(range(8))
    assert r0["indices"][:2] != r0["indices"][2:]

    arms0, arms1 = r0["arms"], r1["arms"]
    assert arms0["iterations"] == arms1["iterations"] == [2, 4]  # 8 samples / global batch 4; resumed at 2
    assert all(torch.equal(arms0["weights"][k], arms1["weights"][k]) for k in arms0["weights"])
    assert arms0["metrics"] == arms1["metrics"] and arms0["final_loss"] == arms1["final_loss"]
    assert arms0["weights_file"] == arms1["weights_file"]
    assert arms0["weights_file_exists"] and arms1["weights_file_exists"]  # rank 1 returns once rank 0 wrote it
    saved = torch.load(tmp_path / "arms" / "eqreg" / "model.pt")
    assert all(torch.equal(saved[k], arms0["weights"][k]) for k in saved)
    assert len(list((tmp_path / "arms" / "eqreg" / "tensorboard").glob("events.*"))) == 2  # rank 0's, per run
    assert (tmp_path / "arms" / "eqreg" / "checkpoints" / "checkpoint_final.pt").exists()


def _failing_worker(local_rank: int) -> None:
    if idist.get_rank() == 1:
        raise ValueError("rank 1 disagrees")


@pytest.mark.slow
def test_an_error_on_one_rank_reaches_the_caller_with_its_type() -> None:
    with pytest.raises(ValueError, match="rank 1 disagrees"):
        launch(_failing_worker, 2, "gloo")


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_sampler_splits_each_step_of_a_one_process_run(world: int) -> None:
    base = RandomSampler(range(10), replacement=True, num_samples=12)
    shards = [ShardedSampler(base, num_replicas=world, rank=r, seed=SEED) for r in range(world)]
    for shard in shards:
        shard.set_epoch(2)
    state = torch.random.get_rng_state()
    lists = [list(shard) for shard in shards]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    assert len({len(part) for part in lists}) == 1 and len(lists[0]) == len(shards[0]) == 12 // world

    with torch.random.fork_rng():
        torch.manual_seed(SEED + 2)
        one_process = list(base)
    per_rank = 2
    for step in range(len(lists[0]) // per_rank):
        ranks = sorted(i for part in lists for i in part[step * per_rank : (step + 1) * per_rank])
        assert ranks == sorted(one_process[step * per_rank * world : (step + 1) * per_rank * world])
    shards[0].set_epoch(3)
    assert list(shards[0]) != lists[0]


def test_one_process_runs_directly_and_the_flags_parse() -> None:
    assert launch(lambda rank, x: (rank, x), 1, "auto", 5) == (0, 5)
    with pytest.raises(ValueError, match="at least 1"):
        launch(lambda rank: None, 0)
    args = add_distributed_arguments(argparse.ArgumentParser()).parse_args(["--nproc", "2", "--backend", "gloo"])
    assert (args.nproc, args.backend) == (2, "gloo")
    assert resolve_backend("auto") == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="unknown distributed backend"):
        resolve_backend("mpi")


@pytest.mark.slow
def test_mar_recipe_with_two_processes(tmp_path, monkeypatch) -> None:
    """``--nproc 2`` on a tiny SynDeepLesion root: rank 0 writes the results, iterations are those of one process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import mar_deeplesion

    root = make_tiny_syndeeplesion(tmp_path / "SynDeepLesion", train_masks=2)
    argv = [
        "--data", str(root), "--geometry-tag", TINY_TAG, "--out", str(tmp_path / "run"), "--arm", "eqreg",
        "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "--stages", "2",
        "--features", "8", "--train-masks", "0-1", "--val-masks", "none", "--no-progress", "--nproc", "2",
        "--backend", "gloo",
    ]
    assert mar_deeplesion.main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["machine"]["processes"] == 2 and results["arms"]["eqreg"]["iterations"] == 2
    assert (tmp_path / "run" / "eqreg" / "model.pt").exists()
    assert mar_deeplesion.main([*argv, "--batch-size", "3"]) == 2  # the global batch must split evenly
