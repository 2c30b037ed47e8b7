"""``python -m genbench.evaluate`` as a user runs it: a summary on stdout, the record on disk, contract errors.

All commands run in one batch (one heavy import, see conftest.run_cli_batch), sharing the session's cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAMILIES, assert_contract_error, requires_fmnist, run_cli_batch, train_run
from genbench.data.idx import find_root, load_split
from genbench.metrics import CONTRACT_FIELDS
from genbench.models import family_class

N = 300
FAST = ["metrics.n_reference=1000", "metrics.heldout_split=val", "metrics.kid_subsets=10", "metrics.extractor=fmnist_classifier"]
pytestmark = requires_fmnist


OWN = ["metrics.n_samples=60", "sampler=ddim", "sampler.steps=3", *FAST]  # the own-protocol run's training config


@pytest.fixture(scope="module")
def work(tmp_path_factory, fmnist) -> Path:
    """A folder of real test PNGs, npz files, a two-step run of every family, and one whose config sets metrics."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "pngs").mkdir()
    images, _ = load_split(find_root(None), "test")
    for i, image in enumerate(images[:N]):
        Image.fromarray(image).save(root / "pngs" / f"{i:04d}.png")
    rng = np.random.default_rng(0)
    np.savez(root / "fake.npz", images=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8))
    np.savez(root / "real.npz", images=rng.integers(0, 256, (80, 28, 28), dtype=np.uint8))
    np.savez(root / "test300.npz", images=images[:N])
    for family in FAMILIES:
        train_run(root / family, family, "budget.max_steps=2")
    train_run(root / "own", "diffusion", "budget.max_steps=2", *OWN)
    return root


def takes_sampler(family: str) -> bool:
    return family_class(family).takes_sampler


def _ckpt(work: Path, run: str) -> str:
    return f"ckpt={work / run / 'checkpoints' / 'last.ckpt'}"


# Bad input: name -> (module, arguments, words of the error line). Each must fail before sampling or scoring.
BAD = {
    "gan_guidance": ("evaluate", ["{gan}", "sampler.guidance_scale=3"], ["guidance_scale=3", "gan"]),
    "vae_guidance": ("evaluate", ["{vae}", "sampler.guidance_scale=3"], ["guidance_scale=3", "vae"]),
    "vae_sampler": ("evaluate", ["{vae}", "sampler=ddpm"], ["takes no sampler", "sampler=ddpm"]),
    "gan_steps": ("evaluate", ["{gan}", "sampler.steps=10"], ["takes no sampler", "sampler.steps=10"]),
    "bad_steps": ("evaluate", ["{diffusion}", "sampler.steps=abc"], ["abc"]),
    "bogus_extractor": ("evaluate", ["{diffusion}", "metrics.extractor=bogus"], ["metrics.extractor='bogus'"]),
    "n_samples_abc": ("evaluate", ["{diffusion}", "metrics.n_samples=abc"], ["metrics.n_samples=abc", "integer"]),
    "out_existing_dir": ("evaluate", ["{diffusion}", "out={work}"], ["is a folder"]),
    "out_other_protocol": ("evaluate", ["{own}", "out={work}/again.json"], ["already holds", "protocol"]),
    "samples_with_sampler": ("evaluate", ["samples={work}/pngs", "sampler.steps=3"], ["sampler"]),
    "extractors_twice": ("evaluate", ["{diffusion}", "metrics.extractors=[fmnist_ssl,fmnist_ssl]"], ["twice"]),
    "extractors_out": ("evaluate", ["{diffusion}", "metrics.extractors=[fmnist_classifier,fmnist_ssl]",
                                    "out={work}/two.json"], ["out=FILE.json holds one score"]),
    "extractors_unknown": ("evaluate", ["{diffusion}", "metrics.extractors=[fmnist_classifier,bogus]"],
                           ["metrics.extractor='bogus'"]),
    "train_bogus_extractor": ("train", ["model=gan", "evaluate=true", "metrics.extractor=bogus", "paths.runs_dir={work}/runs",
                                        "name=bogus"], ["metrics.extractor='bogus'"]),  # fmt: skip
}


@pytest.fixture(scope="module")
def results(work) -> dict:
    runs = {name: _ckpt(work, name) for name in (*FAMILIES, "own")}
    jobs = {
        "pngs": [f"samples={work / 'pngs'}", "data=fashion_mnist", f"metrics.n_samples={N}", "data.subset=2000", *FAST],
        "pngs_again": [f"samples={work / 'pngs'}", f"metrics.n_samples={N}", "data.subset=2000", *FAST, f"out={work / 'again.json'}"],
        "npz": [f"samples={work / 'fake.npz'}", f"reference={work / 'real.npz'}", *FAST],
        "bad_path": [f"samples={work / 'nowhere'}"],
        "neither": [],
        "inception_offline": [f"samples={work / 'fake.npz'}", f"reference={work / 'real.npz'}", "metrics.extractor=inception",
                              "metrics.inception_weights=null"],
        **{family: [runs[family], "metrics.n_samples=100", *FAST, *(["sampler=ddim", "sampler.steps=3"] if takes_sampler(family) else [])]
           for family in FAMILIES},
        "own": [runs["own"]],  # the run's own protocol: n_fake 60, DDIM 3 steps, from its config
        # batch size is no part of a protocol; out=: the own score's file keeps the first record, for comparison
        "own_batch7": [runs["own"], "metrics.batch_size=7", f"out={work / 'own_batch7.json'}"],
        "own_rescore": [runs["own"], "metrics.n_samples=50"],
        "two_extractors": [f"samples={work / 'test300.npz'}", "data=fashion_mnist", f"metrics.n_samples={N}", "data.subset=2000", *FAST,
                           "metrics.extractors=[fmnist_classifier,fmnist_ssl]"],
    }  # fmt: skip
    jobs = {name: ("evaluate", args) for name, args in jobs.items()}
    fill = {**runs, "work": str(work)}
    jobs |= {name: (module, [a.format(**fill) for a in args]) for name, (module, args, _) in BAD.items()}
    with pytest.MonkeyPatch.context() as env:  # no network, and an empty torch hub: no Inception weights anywhere
        env.setenv("GENBENCH_OFFLINE", "1")
        env.setenv("TORCH_HOME", str(work / "torch_home"))
        return run_cli_batch(jobs, work / "cli")


def _record(result) -> dict:
    """The record in the file the command's stdout summary names first; the summary shows its main scores."""
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()
    written = [line.removeprefix("wrote ") for line in summary if line.startswith("wrote ")]
    record = json.loads(Path(written[0]).read_text())
    assert summary[0].startswith(f"protocol {record['protocol']}:") and len(result.stdout) < 1000, result.stdout
    assert f"FID {record['fid']:.2f}" in summary[1] and f"recall {record['recall']:.3f}" in summary[1], summary
    return record


def _scores(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((folder / "metrics").glob("*.json"))}


def test_samples_folder_against_fashion_mnist_prints_and_writes_all_fields(results, work):
    record = _record(results["pngs"])
    assert set(CONTRACT_FIELDS) <= set(record)
    assert record["n_fake"] == N and record["n_real"] == 1000 and record["extractor"] == "fmnist_classifier"
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "memorization"):
        assert isinstance(record[key], float), key
    assert record["kid_subset_size"] == N and record["isc_splits"] == 3
    assert record["memorization"] < 0.2 and record["n_train"] == 2000  # test images are not training copies
    assert record["protocol"].startswith(f"fmnist_classifier-n{N}-") and record["sampler"] is None
    assert _scores(work / "pngs") == {record["protocol"]: record}
    assert not (work / "pngs" / "metrics.json").exists()  # bare images have no protocol of their own
    assert f"protocol {record['protocol']}" in results["pngs"].stderr


def test_second_evaluation_hits_the_cache(results, work):
    again = _record(results["pngs_again"])
    assert again["cache_misses"] == 0 and again["cache_hits"] >= 3  # reference, train, held-out
    assert again["fid"] == pytest.approx(_record(results["pngs"])["fid"], rel=1e-6)
    assert again["protocol"] == _record(results["pngs"])["protocol"]
    assert json.loads((work / "again.json").read_text()) == again  # out=PATH


def test_npz_against_reference_npz_writes_beside_it(results, work):
    record = _record(results["npz"])
    assert record["n_fake"] == 60 and record["n_real"] == 80 and record["memorization"] is None
    assert record["protocol_fields"]["reference"].startswith("sha256:")
    assert json.loads((work / "fake.metrics" / f"{record['protocol']}.json").read_text()) == record


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_of_every_family_is_scored_under_its_protocol(results, work, family):
    record = _record(results[family])
    assert set(CONTRACT_FIELDS) <= set(record)
    assert record["n_fake"] == 100 and record["family"] == family and record["sample_seconds_per_1k"] > 0
    assert record["sample_flops_per_image"] > 0  # genbench.training.flops: the sampler's network calls, or one pass
    run = json.loads((work / family / "run.json").read_text())
    phases = run["train_flops_phases"]  # one per kind of training step (a latent model: its stage, then the model)
    assert sum(phase["images"] for phase in phases.values()) == run["images_seen"]
    assert run["train_flops"] == sum(p["flops_per_image"] * p["images"] for p in phases.values()) > 0
    assert run["train_flops_per_image"] == round(run["train_flops"] / run["images_seen"])
    assert all(isinstance(record[k], float) for k in ("fid", "kid_mean", "precision", "recall", "memorization"))
    if takes_sampler(family):
        assert (record["sampler"], record["sampler_steps"]) == ("ddim", 3) and "-ddim3-" in record["protocol"]
        assert record["sampler_settings"]["sampler"] == "ddim" and record["sampler_nfe"] >= 3
    else:  # a one-pass model takes no sampler: none is recorded, and none is logged
        assert record["sampler"] is None and record["sampler_steps"] is None and record["sampler_settings"] is None
        assert "ddim" not in record["protocol"] and "ddim" not in results[family].stderr.lower()
    # metrics.n_samples=100 is not the run's own protocol (its config says 10,000): metrics.json stays unwritten.
    assert _scores(work / family) == {record["protocol"]: record}
    assert not (work / family / "metrics.json").exists()
    assert "not the run's own" in results[family].stderr


def test_checkpoint_is_scored_under_its_runs_own_protocol_by_default(results, work):
    own = _record(results["own"])
    assert own["n_fake"] == 60 and own["sampler_steps"] == 3 and own["extractor"] == "fmnist_classifier"
    assert own["kid_subsets"] == 10 and own["protocol"].startswith("fmnist_classifier-n60-ddim3-")
    assert "the run's own" in results["own"].stderr and f"protocol {own['protocol']}" in results["own"].stderr
    # The same protocol at another batch size: the same images, so the same numbers.
    again = _record(results["own_batch7"])
    assert again["protocol"] == own["protocol"]
    assert own["sampling_batch_size"] == 64 and again["sampling_batch_size"] == 7  # auto: fp32 sampling on a CPU
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "precision", "recall", "memorization"):
        assert again[key] == own[key], key
    # A re-score under another protocol has its own file and leaves the run's own score alone.
    rescore = _record(results["own_rescore"])
    assert rescore["n_fake"] == 50 and rescore["protocol"] != own["protocol"]
    assert set(_scores(work / "own")) == {own["protocol"], rescore["protocol"]}
    assert json.loads((work / "own" / "metrics.json").read_text())["protocol"] == own["protocol"]
    assert json.loads((work / "own" / "metrics.json").read_text())["fid"] == own["fid"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_before_any_work_and_writes_nothing(results, work, case):
    module, _, words = BAD[case]
    result = results[case]
    if case == "out_other_protocol":  # known once the protocol is: after the data's and extractor's log lines
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("genbench: error:") and all(word in last for word in words), last
    else:
        assert_contract_error(result, *words)
    assert "sampling" not in results[case].stderr and "extracting" not in results[case].stderr
    assert results[case].stdout.strip() == ""
    if case == "out_other_protocol":  # the other protocol's file is untouched
        assert json.loads((work / "again.json").read_text())["protocol"] == _record(results["pngs_again"])["protocol"]
    if module == "train":  # no run folder, and no file anywhere under the study's folder
        left = [p for p in (work / "runs").rglob("*") if p.is_file() or "-seed" in p.name]
        assert left == [], left


def test_bad_samples_path_is_a_contract_error(results, work):
    assert_contract_error(results["bad_path"], "does not exist")
    assert not (work / "nowhere").exists()


def test_neither_ckpt_nor_samples_is_a_contract_error(results):
    assert_contract_error(results["neither"], "ckpt=PATH")


def test_inception_offline_without_weights_is_a_contract_error(results, work):
    result = results["inception_offline"]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]  # after the log lines of the work done before it
    assert last.startswith("genbench: error:") and "metrics.inception_weights" in last
    assert result.stdout == ""


def test_several_extractors_score_the_same_images_one_protocol_and_file_each(results, work):
    result = results["two_extractors"]
    assert result.returncode == 0, result.stderr[-3000:]
    scores = {p.stem: json.loads(p.read_text()) for p in (work / "test300.metrics").glob("*.json")}
    by_extractor = {record["extractor"]: record for record in scores.values()}
    assert set(by_extractor) == {"fmnist_classifier", "fmnist_ssl"} and len(scores) == 2
    classifier, ssl = by_extractor["fmnist_classifier"], by_extractor["fmnist_ssl"]
    assert classifier["protocol"].startswith(f"fmnist_classifier-n{N}-") and ssl["protocol"].startswith(f"fmnist_ssl-n{N}-")
    assert ssl["extractor_sha256"] != classifier["extractor_sha256"] and ssl["is_mean"] is None
    for key in ("fid", "fid_inf", "kid_mean", "precision", "recall", "density", "coverage", "memorization"):
        assert isinstance(ssl[key], float), key
    # the classifier's score is the one a single-extractor evaluation of the same images gives
    assert classifier["fid"] == pytest.approx(_record(results["pngs"])["fid"], rel=1e-6)
    printed = result.stdout.split("protocol ")[1:]
    assert [block.split(":")[0] for block in printed] == [classifier["protocol"], ssl["protocol"]]
    assert "fmnist_ssl features" in printed[1] and "IS n/a" in printed[1]
