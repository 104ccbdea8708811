"""Does InSPO help? The powered DPO-family grid on the verifiable benchmark, resumable across sessions (issue 13).

    nice python scripts/run_evidence.py                  # everything; rerun after a kill: finished runs are skipped
    python scripts/run_evidence.py --stage summary       # only rebuild summary.json / .md / plots from the results
    python scripts/run_evidence.py --smoke --runs /tmp/ev --out /tmp/ev/results   # tiny model, a few minutes

Every run starts from SmolLM2-135M-Instruct (full fine-tuning, fp32, the quickstart recipe) and trains on
``--pairs`` pairs (``--pairs / 4`` optimizer steps) of the 90% training split of
``inspo/assets/verifiable/train.jsonl``; the other 10% (116 pairs) is the validation split. Seed s trains in the
order ``data.loader.order_seed = 42 + s``: the standard and the InSPO run of a seed see the same pairs in the same
order.
Every run validates at step 0 (one ``inspo validate`` of the untrained model per loss and conditioning) and every
``--val-every`` steps, so the transfer plot can show, per InSPO run, the conditioned ``val/reward_accuracy`` and
the unconditioned ``val/plain_reward_accuracy`` next to the standard run's ``val/reward_accuracy``.

Per loss (each loss in its own thread; all share ``--jobs`` job slots, a freed slot going to the earliest of
dpo, simpo, ipo, rdpo, orpo that has a job waiting):

1. **lr sweep** (standard, seed 0) over ``--grid``; the winner is the highest final validation reward accuracy
   (ties: lower validation loss). While the winner sits at an edge of the tried rates, the grid grows by a
   factor 2 past that edge (at most ``--max-extensions`` times), so the chosen rate is bracketed.
2. **seeds** (3 for DPO and SimPO, 1 for the others; ``--seeds N`` or ``--seeds dpo=12 simpo=4`` overrides):
   standard and InSPO with the chosen rate (the sweep's seed-0 standard run is reused). Seeds past those defaults
   are queued after every other job of the grid, sensitivity runs included (more seeds narrow a standard error
   once every loss has its minimum).
3. **sensitivity** (``--sensitivity``, default DPO and SimPO): the sweep picks by validation accuracy, whose
   standard error on 116 pairs (~4 points) exceeds the differences between rates. When the lowest validation loss
   sits at another rate, seeds 0 .. N-1 (``--sensitivity-seeds``, default 1, ``dpo=5`` per loss) are also trained
   there with both conditionings (after every other job of the grid but before the extra seeds of step 2; the
   sweep's standard run is reused while its model is on disk), so the head-to-head can be read at both rates.
4. **evaluation** of every seed's two models and of the untrained start with ``inspo.eval.suite``: ``--own``
   held-out prompts of our families (gold reward), ``--ifeval`` IFEval-style prompts and the IFBench test set
   (IFEval's metrics; ``pip install 'inspo[eval]'``), greedy, ``--max-new-tokens``.

A run saves a checkpoint every ``--checkpoint-every`` steps and when the driver is stopped with SIGTERM (``kill --
-PGID`` of its process group): a driver started later resumes the unfinished run from it, exactly (``inspo fit
--ckpt_path last``), and its record lists the attempts (code commit, first step, seconds).

Results (metrics, never weights) go to ``--out`` as they finish, each stamped with the git commit of the code
that produced it: ``runs/NAME.json`` (validation curve, time, setting), ``eval/NAME.json`` (per-prompt scores),
``sweep.json``; then ``summary.json``, ``summary.md`` and the plots (``inspo.eval.evidence_report``).
Checkpoints, models and answers stay under ``--runs``.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_table as table  # the shared fit command, reference cache and process helpers)

ROOT = table.ROOT
LOSSES = list(table.LOSSES)
CONDITIONINGS = ("standard", "inspo")
GRID = [5e-6, 1e-5, 2e-5]
SMOKE_TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def code_commit() -> str:
    """HEAD of the repository, with ``-dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def val_curve(folder: Path, fit: bool = False) -> list[dict[str, float]]:
    """Every validation row of a run's CSV log, in order: ``{"step", "val/...": value}``.

    With ``fit`` (a training run's log) a row's step is the logged step plus one, the optimizer step it follows:
    Lightning logs a validation inside training at the step count before the one that triggered it, and the full
    sanity check before step 1 (``num_sanity_val_steps: -1``, logged by our monitor) at step -1.
    """
    rows: dict[int, dict[str, float]] = {}
    for path in sorted(folder.glob("inspo/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(path.open()):
            values = {k: float(v) for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
            if values:
                step = int(float(row.get("step") or 0)) + (1 if fit else 0)
                rows[step] = {"step": step, **values}  # a resumed run's next version redoes the steps after its checkpoint
    return [rows[step] for step in sorted(rows)]


def run_checkpoints(folder: Path) -> list[Path]:
    """A run's checkpoints that ``inspo fit --ckpt_path last`` resumes from: ``last.ckpt`` of every version, and
    ``hpc_ckpt_N.ckpt`` in the run folder (where SIGTERM saves a run that checkpoints nothing else)."""
    links = [link.resolve() for link in folder.glob("inspo/version_*/checkpoints/last.ckpt") if link.exists()]
    return links + sorted(folder.glob("hpc_ckpt_*.ckpt"))


def checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint's name (``epoch=0-step=48.ckpt``), or None (``hpc_ckpt_1.ckpt`` does not say)."""
    m = re.search(r"step=(\d+)", path.name)
    return int(m.group(1)) if m else None


class Slots:
    """At most ``n`` jobs (fits, validations, evaluations) at once; a freed slot goes to the waiting job of the
    lowest priority number (the earliest loss), then to the earliest asked, ``grace`` seconds after it was freed:
    the pipeline that freed it has queued its next job by then (a sweep's next rate, the InSPO run after the
    sweep), which would otherwise lose the slot to a later loss's job that was already waiting. The first slots
    wait ``grace`` seconds too: a resumed driver's pipelines reach their next job at different times (one reads a
    longer sweep first), and the earliest loss's job should not lose them to a later loss's that got there first."""

    def __init__(self, n: int, grace: float = 0.0) -> None:
        self.free, self.waiting, self.order, self.cond = n, [], itertools.count(), threading.Condition()
        self.grace, self.freed_at = grace, time.monotonic()

    def _wait(self, ticket: tuple[int, int]) -> float | None:
        """Seconds until ``ticket`` may take a slot: 0 now, None when it is not its turn (wait for a change)."""
        if not (self.free > 0 and self.waiting[0] == ticket):
            return None
        return max(0.0, self.freed_at + self.grace - time.monotonic())

    @contextmanager
    def __call__(self, priority: int):
        with self.cond:
            ticket = (priority, next(self.order))
            heapq.heappush(self.waiting, ticket)
            while (wait := self._wait(ticket)) != 0:
                self.cond.wait(wait)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.cond.notify_all()  # the next waiter may take another free slot
        try:
            yield
        finally:
            with self.cond:
                self.free, self.freed_at = self.free + 1, time.monotonic()
                self.cond.notify_all()


class Driver:
    """The grid's state lives in files only (``--out`` and ``--runs``), so a killed driver resumes.

    Every loss runs its own pipeline (step-0 validations, lr sweep, seeds) in its own thread; the jobs of all of
    them share ``--jobs`` slots, the earlier loss first. So a sweep growing one rate at a time, or an odd number of
    seed runs, leaves no slot idle while a later loss has work.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out, self.runs = args, Path(args.out), Path(args.runs)
        self.commit = code_commit()
        self.lock = threading.Lock()
        self.slots = Slots(args.jobs, grace=args.slot_grace)
        self.changed = False  # whether this invocation trained or evaluated anything (then the plots are redrawn)

    # --- the two expensive steps (subprocesses); the tests replace them ---------------------------------------

    def fit(self, loss: str, conditioning: str, seed: int, lr: float, folder: Path, resume: bool = False) -> Path:
        """Train one run into ``folder`` (``resume``: from its newest checkpoint); returns its HF model folder.

        The run saves a checkpoint every ``--checkpoint-every`` steps (one kept), and on SIGTERM (``kill`` of the
        driver's process group) after its current step: a driver started later resumes it exactly (``inspo fit
        --ckpt_path last``) instead of training it again (:meth:`train` removes the checkpoints afterwards). A
        validation due at the very step a SIGTERM saved is not run by either part: the curve lacks that point."""
        command = table.fit_command(self.args, loss, conditioning, seed, {"lr": lr}, folder)
        command += ["--trainer.enable_checkpointing", "true",
                    "--checkpoint.every_n_train_steps", str(self.args.checkpoint_every)]
        log = folder / ("fit-resumed.log" if resume else "fit.log")
        table.run_logged(command + (["--ckpt_path", "last"] if resume else []), log, table.job_env(self.args),
                         f"run {folder.name}")
        model = table.hf_model(folder)
        if model is None:
            raise RuntimeError(f"run {folder.name} wrote no HF model; see {log}")
        return model

    def validate_untrained(self, loss: str, conditioning: str, folder: Path) -> list[dict[str, float]]:
        """Validation metrics of the untrained model (step 0) under a loss and conditioning."""
        command = table.fit_command(self.args, loss, conditioning, 0, {"lr": GRID[0]}, folder)
        command[command.index("fit")] = "validate"
        table.run_logged(command, folder / "validate.log", table.job_env(self.args), f"step-0 validation {folder.name}")
        return val_curve(folder)

    def suite(self, model: str, out: Path) -> dict[str, Any]:
        """Generate and judge every prompt set for one model (``python -m inspo.eval.suite``)."""
        a = self.args
        command = [sys.executable, "-m", "inspo.eval.suite", "--model", model, "--out", str(out), "--threads",
                   str(a.threads), "--own", str(a.own), "--ifeval", str(a.ifeval), "--ifbench", str(a.ifbench),
                   "--max-new-tokens", str(a.max_new_tokens), "--dtype", a.dtype, "--batch-size",
                   str(a.eval_batch_size), "--external-batch-size", str(a.external_batch_size), "--batch-tokens",
                   str(a.batch_tokens), "--device", a.eval_device]
        out.parent.mkdir(parents=True, exist_ok=True)
        table.run_logged(command, out.with_suffix(".log"), table.job_env(self.args), f"evaluating {model}")
        return json.loads(out.read_text())

    # --- resumable steps ----------------------------------------------------------------------------------------

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)  # atomic: a killed driver never leaves half a result

    def train(self, loss: str, conditioning: str, seed: int, lr: float, held: bool = False,
              again: bool = False) -> dict[str, Any]:
        """One training run's metrics (trained now, or read back when already finished); ``held``: the caller holds
        a job slot for it; ``again``: train it even though its metrics exist (they are replaced when it is done)."""
        name = table.run_name(loss, conditioning, seed, {"lr": lr})
        record = self.out / "runs" / f"{name}.json"
        if record.is_file() and not again:
            return json.loads(record.read_text())
        folder = self.runs / name
        attempts_file = folder / "attempts.json"  # when and with which code each attempt at this run started
        checkpoints = [] if again else run_checkpoints(folder)
        if not checkpoints:  # an unfinished run without a checkpoint starts over
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        attempts = json.loads(attempts_file.read_text()) if checkpoints and attempts_file.is_file() else []
        if checkpoints and not attempts:  # started by a driver that kept no record of it: its time is unknown
            attempts = [{"commit": None, "start": None, "from_step": 0, "seconds": None}]
        with nullcontext() if held else self.slots(self.priority(loss)):
            start = time.time()
            if checkpoints:
                newest = max(checkpoints, key=lambda path: path.stat().st_mtime)
                if attempts[-1]["start"] is not None:  # the earlier attempt trained until its newest checkpoint
                    attempts[-1]["seconds"] = round(max(0.0, newest.stat().st_mtime - attempts[-1]["start"]), 1)
                print(f"resuming {name} from {newest.name}", flush=True)
            attempts.append({"commit": self.commit, "start": start,
                             "from_step": checkpoint_step(newest) if checkpoints else 0})
            attempts_file.write_text(json.dumps(attempts, indent=1) + "\n")
            model = self.fit(loss, conditioning, seed, lr, folder, resume=bool(checkpoints))
        attempts[-1]["seconds"] = round(time.time() - start, 1)
        for path in folder.glob("inspo/version_*/checkpoints"):
            shutil.rmtree(path)  # ~1.6 GB each (weights and Adam state); the model is in hf_model
        for path in folder.glob("hpc_ckpt_*.ckpt"):
            path.unlink()
        curve, seconds = val_curve(folder, fit=True), [a.get("seconds") for a in attempts]
        data = {"run": name, "loss": loss, "conditioning": conditioning, "seed": seed, "lr": lr,
                "pairs": self.args.pairs, "steps": self.args.steps, "val_every": self.args.val_every,
                "commit": self.commit, "train_seconds": None if None in seconds else round(sum(seconds), 1),
                "model": str(model), "val_curve": curve, "final_val": curve[-1] if curve else {}}
        if len(attempts) > 1:  # trained in parts: each part's code, first step and seconds
            data["attempts"] = attempts
        self._write(record, data)
        self.changed = True
        print(f"trained {name} in {attempts[-1]['seconds']:.0f} s" + (" (the last part)" if len(attempts) > 1 else ""),
              flush=True)
        return data

    def evaluate(self, name: str, model: str, held: bool = False) -> dict[str, Any]:
        """One model's suite scores (evaluated now, or read back); ``held`` as for :meth:`train`."""
        record = self.out / "eval" / f"{name}.json"
        if record.is_file():
            return json.loads(record.read_text())
        with nullcontext() if held else self.slots(self.priority(name.split("-")[0])):
            start = time.time()
            result = self.suite(model, self.runs / "eval" / f"{name}.json")
        result.update(name=name, commit=self.commit, eval_seconds=round(time.time() - start, 1))
        self._write(record, result)
        self.changed = True
        print(f"evaluated {name} in {result['eval_seconds']:.0f} s", flush=True)
        return result

    def step0(self, loss: str, conditioning: str) -> None:
        record = self.out / "runs" / f"step0-{loss}-{conditioning}.json"
        if record.is_file():
            return
        folder = self.runs / f"step0-{loss}-{conditioning}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with self.slots(self.priority(loss)):
            curve = self.validate_untrained(loss, conditioning, folder)
        self._write(record, {"loss": loss, "conditioning": conditioning, "commit": self.commit,
                             "val": {**(curve[-1] if curve else {}), "step": 0}})

    def priority(self, loss: str, tier: int = 0) -> int:
        """Slot priority of a loss's jobs: its place in ``--losses`` (the start model's evaluation: -1), after every
        job of a lower ``tier`` (0: the grid, 1: sensitivity runs, 2: seeds past the defaults at the chosen rate)."""
        return len(self.args.losses) * tier + (self.args.losses.index(loss) if loss in self.args.losses else -1)

    def train_and_evaluate(self, loss: str, conditioning: str, seed: int, lr: float, sensitivity: bool = False) -> None:
        """Train (or read back) and evaluate one model; ``sensitivity``: a run at the sweep's other rate, named
        ``LOSS-CONDITIONING-sSEED-lrLR`` and queued after every job of the grid itself; a seed past the loss's
        default count at the chosen rate is queued after those."""
        priority = self.priority(loss, tier=1 if sensitivity else 2 if seed >= table.SEEDS[loss] else 0)
        name = f"{loss}-{conditioning}-s{seed}" + (f"-lr{lr:g}" if sensitivity else "")
        if (self.out / "eval" / f"{name}.json").is_file():
            return  # finished before (its numbers are in the summary): a resumed driver hands the slots on at once
        # One slot for the fit and its evaluation: a freed slot went to another loss's waiting fit before this
        # thread asked again, and the evaluation waited a whole run (~30 min) for the next one.
        with self.slots(priority):
            run = self.train(loss, conditioning, seed, lr, held=True)
            if not Path(run["model"]).is_dir():  # metrics kept but the model is gone (another machine): train again,
                run = self.train(loss, conditioning, seed, lr, held=True, again=True)  # the record kept till then
            self.evaluate(name, run["model"], held=True)
        with self.lock:
            self.summary(plots=False)  # the numbers as soon as they exist; plots once per loss

    def sweep(self, loss: str) -> float:
        """Train the lr grid (standard, seed 0), growing it past an edge winner; returns the chosen rate."""
        path = self.out / "sweep.json"
        grid = sorted(set(self.args.grid))
        for extension in range(self.args.max_extensions + 1):
            with ThreadPoolExecutor(self.args.jobs) as pool:
                tried = list(pool.map(lambda lr: self.train(loss, "standard", 0, lr), grid))
            best = max(tried, key=lambda r: (r["final_val"].get("val/reward_accuracy", 0.0),
                                             -r["final_val"].get("val/loss", 0.0)))
            lrs = sorted(r["lr"] for r in tried)
            bracketed = lrs[0] < best["lr"] < lrs[-1]
            if bracketed or extension == self.args.max_extensions:
                break
            grid = [*grid, lrs[-1] * 2 if best["lr"] == lrs[-1] else lrs[0] / 2]
        with self.lock:
            sweeps = json.loads(path.read_text()) if path.is_file() else {}
            sweeps[loss] = {"chosen_lr": best["lr"], "bracketed": bracketed,
                            "tried": [{"lr": r["lr"], **{k: r["final_val"].get(k) for k in
                                      ("val/reward_accuracy", "val/loss", "val/reward_margin")},
                                       "commit": r["commit"]} for r in tried]}  # the code that trained each
            self._write(path, sweeps)
        return best["lr"]

    def loss_pipeline(self, loss: str) -> None:
        """Step-0 validations, the lr sweep, then every seed's standard and InSPO run and their evaluations."""
        for conditioning in CONDITIONINGS:
            self.step0(loss, conditioning)
        lr = self.sweep(loss)
        seeds, default = self.args.seeds.get(loss, table.SEEDS[loss]), table.SEEDS[loss]
        jobs = [(loss, c, s, lr) for s in range(min(seeds, default)) for c in CONDITIONINGS]
        if loss in self.args.sensitivity and (other := self.sensitivity_lr(loss)) is not None:
            jobs += [(loss, c, s, other, True) for s in range(self.args.sensitivity_seeds.get(loss, 1))
                     for c in CONDITIONINGS]
        jobs += [(loss, c, s, lr) for s in range(default, seeds) for c in CONDITIONINGS]  # after the rest
        with ThreadPoolExecutor(self.args.jobs) as pool:
            list(pool.map(lambda job: self.train_and_evaluate(*job), jobs))

    def sensitivity_lr(self, loss: str) -> float | None:
        """The swept rate of lowest validation loss, when validation accuracy (the grid's criterion) chose another:
        with 116 validation pairs an accuracy's standard error is ~4 points, more than the rates' differences, so
        the head-to-head is also measured (seed 0) at the rate the other criterion picks."""
        entry = json.loads((self.out / "sweep.json").read_text())[loss]
        best = min(entry["tried"], key=lambda r: r.get("val/loss") or float("inf"))
        return None if best["lr"] == entry["chosen_lr"] else best["lr"]

    def summary(self, plots: bool = True) -> dict[str, Any] | None:
        from inspo.eval.evidence_report import write_summary

        return write_summary(self.out, self.args, plots=plots)

    def check_settings(self) -> None:
        """Refuse to mix evaluation settings within one grid (paired comparisons need identical settings)."""
        from inspo.eval.suite import SuiteSettings

        a, record = self.args, self.out / "eval" / "start.json"
        wanted = SuiteSettings(own=a.own, ifeval=a.ifeval, ifbench=None if a.ifbench < 0 else a.ifbench,
                               max_new_tokens=a.max_new_tokens, dtype=a.dtype, batch_size=a.eval_batch_size,
                               external_batch_size=a.external_batch_size, batch_tokens=a.batch_tokens,
                               device=a.eval_device).key()
        saved = json.loads(record.read_text())["settings"] if record.is_file() else wanted
        saved.setdefault("external_batch_size", saved["batch_size"])  # before 3fd3aa3 one batch size served all sets
        if saved != wanted:
            changed = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in wanted.items() if saved.get(k) != v)
            raise SystemExit(f"inspo: error: {self.out} was evaluated with other settings ({changed}); use the "
                             "same options or another --out")

    def reference_cache(self) -> None:
        """Build the shared reference cache (``run_table.build_reference_cache``), carried with the results: its
        file (~20 KB for the 1,160 pairs) is copied to ``--out``/reference-cache and back into ``$INSPO_CACHE`` on a
        fresh machine, which saves rebuilding it (~16 minutes here). A copy that no longer matches (other pairs,
        tokenizer or weights: another key) or is corrupt is rebuilt by inspo itself."""
        carried, local = self.out / "reference-cache", local_reference_cache()
        local.mkdir(parents=True, exist_ok=True)
        for path in carried.glob("*.refcache"):
            if not (local / path.name).is_file():
                shutil.copy2(path, local / path.name)
        before = {p.name: p.stat().st_mtime for p in local.glob("*.refcache")}
        table.build_reference_cache(self.args)
        for path in local.glob("*.refcache"):
            if before.get(path.name) != path.stat().st_mtime:
                carried.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, carried / path.name)

    def run(self) -> None:
        a = self.args
        self.check_settings()
        start = time.time()
        if a.stage in ("all", "train"):
            self.reference_cache()
            self.evaluate("start", a.start_model)
            with ThreadPoolExecutor(len(a.losses)) as pool:
                list(pool.map(self.loss_pipeline, a.losses))
        self.summary(plots=self.changed or a.stage == "summary" or not (self.out / "transfer.png").is_file())
        print(f"done in {time.time() - start:.0f} s; summary in {self.out / 'summary.json'}", flush=True)


def local_reference_cache() -> Path:
    """Where inspo keeps reference caches on this machine (``$INSPO_CACHE/reference``)."""
    from inspo.models import cache_dir

    return cache_dir() / "reference"


def missing_extras() -> list[str]:
    """The modules of the ``eval`` extra that are not installed."""
    return [m for m in ("if_verifiable", "punkt", "ifbench") if importlib.util.find_spec(m) is None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from inspo.eval.suite import SuiteSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["all", "train", "summary"], default="all")
    parser.add_argument("--pairs", type=int, default=512, help="training pairs per run (4 per optimizer step)")
    parser.add_argument("--val-every", type=int, default=32, help="optimizer steps between validations")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=LOSSES)
    parser.add_argument("--seeds", nargs="+", default=[], metavar="[LOSS=]N",
                        help="seeds for every loss (N) or for some (dpo=12); default: 3 for DPO and SimPO, 1 else")
    parser.add_argument("--grid", type=float, nargs="+", default=GRID, help="initial learning rates of the sweep")
    parser.add_argument("--max-extensions", type=int, default=3, help="grid extensions past an edge winner")
    parser.add_argument("--sensitivity", nargs="*", choices=LOSSES, default=["dpo", "simpo"],
                        help="losses whose head-to-head is also measured at the swept rate of lowest "
                        "validation loss, when accuracy chose another; after the rest of the grid")
    parser.add_argument("--sensitivity-seeds", nargs="+", default=[], metavar="[LOSS=]N",
                        help="seeds of those runs, as --seeds (default 1: seed 0); before the extra seeds of --seeds")
    parser.add_argument("--checkpoint-every", type=int, default=16, help="optimizer steps between a run's "
                        "checkpoints, from which a killed run resumes (also saved on SIGTERM)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--slot-grace", type=float, default=15.0, help="seconds a freed slot waits before it "
                        "is handed on, so the loss that freed it queues its next job first")
    parser.add_argument("--own", type=int, default=1000, help="held-out prompts of our families")
    parser.add_argument("--ifeval", type=int, default=120, help="IFEval-style prompts (0: none)")
    parser.add_argument("--ifbench", type=int, default=120, help="IFBench prompts, evenly spaced over the 276 kept "
                        "(-1: all 276, 0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap in the evaluation")
    parser.add_argument("--eval-batch-size", type=int, default=96, help="prompts per generate call (96: 1.5x less "
                        "CPU per prompt than 32, measured)")
    parser.add_argument("--external-batch-size", type=int, default=32, help="prompts per generate call on the "
                        "IFEval / IFBench prompts (long ones: large batches cost more per prompt)")
    parser.add_argument("--batch-tokens", type=int, default=SuiteSettings.batch_tokens, help="most padded tokens "
                        "per generate call (a long prompt does not pad a whole batch to its length)")
    parser.add_argument("--dtype", default="fp32", help="generation precision (fp32: the same on every CPU)")
    parser.add_argument("--eval-device", default="cpu", help="cpu, or cuda on a GPU machine (then the whole grid)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "evidence"), help="checkpoints, models, answers")
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "evidence"), help="committed results")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model, 24 pairs, a few prompts")
    if "--smoke" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; explicit options still win
        parser.set_defaults(pairs=8, val_every=1, grid=[1e-4, 1e-3], own=8, ifeval=4, ifbench=4, max_new_tokens=8,
                            eval_batch_size=8, external_batch_size=4, slot_grace=0.0)
    args = parser.parse_args(argv)
    args.seeds = parse_seeds(parser, args.seeds)
    args.sensitivity_seeds = parse_seeds(parser, args.sensitivity_seeds, "--sensitivity-seeds")
    if args.ifeval or args.ifbench:
        missing = missing_extras()
        if missing:  # fail now, not after hours of training
            parser.error(f"the external judges need {', '.join(missing)}: pip install 'inspo[eval]' "
                         "(or --ifeval 0 --ifbench 0)")
    args.start_model = "bundled:SmolLM2-135M-Instruct"
    args.fit_extra = []
    if args.smoke:
        smoke(args)
    args.steps = max(1, args.pairs // 4)
    return args


def parse_seeds(parser: argparse.ArgumentParser, values: list[str], option: str = "--seeds") -> dict[str, int]:
    """``--seeds``: ``N`` (every loss) and/or ``LOSS=N`` entries, later ones winning -> seeds per loss."""
    seeds: dict[str, int] = {}
    for value in values:
        loss, _, count = value.rpartition("=")
        if loss and loss not in LOSSES:
            parser.error(f"{option} {value}: unknown loss {loss!r} (one of {', '.join(LOSSES)})")
        if not count.isdigit() or int(count) < 1:
            parser.error(f"{option} {value}: the count must be a whole number >= 1")
        seeds.update({loss: int(count)} if loss else dict.fromkeys(LOSSES, int(count)))
    return seeds


def smoke(args: argparse.Namespace) -> None:
    """The smoke run's start: a tiny random model saved once, trained on 24 pairs (the other smaller settings are
    the parser's defaults under ``--smoke``)."""
    from inspo.models import BUNDLED_SMOLLM2, load_causal_lm, load_tokenizer

    start = Path(args.runs) / "tiny-start"
    if not (start / "config.json").is_file():
        load_causal_lm(BUNDLED_SMOLLM2, random_init=SMOKE_TINY, seed=0).save_pretrained(start)
        load_tokenizer(BUNDLED_SMOLLM2).save_pretrained(start)
    args.start_model = str(start)
    args.fit_extra = ["--model.model", str(start), "--data.read.max_pairs", "24", "--trainer.accelerator", "cpu"]


def main(argv: list[str] | None = None) -> None:
    Driver(parse_args(argv)).run()


if __name__ == "__main__":
    main()
