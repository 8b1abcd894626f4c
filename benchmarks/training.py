"""Sections b-g's training runs: agglom's loop and a minimal plain loop over the same task, the train-split cache
they read, and the cache's bytes and fidelity per teacher."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

from benchmarks.common import Rows, StepClock, interleave, quiet

#: the step-vs-timm target (issue 46): the training step's FLOP rate over the student's own timm step's
STEP_VS_TIMM_TARGET = 0.92


def run_train(cfg) -> Dict[str, Any]:
    """agglom's loop; per-step seconds from the batch clock, FLOPs/sample from run.json."""
    import shutil

    from agglom.distill import train

    shutil.rmtree(Path(cfg.out_dir) / cfg.name, ignore_errors=True)  # each timed round trains from scratch
    clock = StepClock()
    with quiet():
        run_dir = train(cfg, hooks=[clock])
    summary = json.loads((Path(run_dir) / "run.json").read_text())
    return {"step_s": clock.step_seconds(), "flops_per_sample": summary.get("flops_per_sample")}


def run_plain(cfg, device: str) -> Dict[str, Any]:
    """The minimal loop: the same task (AgglomTask's model + objective), teachers and loader, AdamW, clip."""
    import torch

    from agglom.data.readers import train_loader
    from agglom.distill.setup import build_teachers, stats_batches
    from agglom.distill.task import AgglomTask, teacher_spec
    from agglom.train.loop import seed_everything
    from agglom.train.optim import param_groups
    from agglom.train.setup import group_names, in_chans_of

    seed_everything(cfg.seed * 1000)
    dev = torch.device(device)
    teachers = build_teachers(cfg, dev)
    task = AgglomTask(cfg, [teacher_spec(e, teachers[e.name]) for e in cfg.teachers], teachers, group_names(cfg),
                      in_chans_of(cfg))
    task.model.to(dev)
    use_bf16 = dev.type == "cuda"
    task.attach(task.model, dev, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16))
    task.fit_normalisers(stats_batches(cfg))
    opt = torch.optim.AdamW(param_groups(task.model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    task.train()
    steps, epoch = 0, 0
    clock = StepClock()
    while steps < cfg.optim.steps:
        for batch in train_loader(cfg, epoch=epoch):
            clock.on_batch(batch)
            loss = task(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            steps += 1
            if steps >= cfg.optim.steps:
                break
        epoch += 1
    return {"step_s": clock.step_seconds()}



def write_train_cache(cfg, teachers: Sequence[str], out: Path, device: str, dtype: str = "int8",
                      batch_size: int = 64) -> float:
    from agglom.cache.writer import write_cache

    t = time.perf_counter()
    with quiet():
        write_cache(cfg, list(teachers), str(out), dtype=dtype, pool=1, splits=[cfg.data.train_split],
                    batch_size=batch_size, device=device)
    return time.perf_counter() - t



def bench_bytes(rows: Rows, cfg, teachers: Sequence[str], out: Path, device: str) -> None:
    import torch
    import torch.nn.functional as F

    import teachers as zoo
    from agglom.cache import open_cache
    from agglom.cache.codec import pool_spatial
    from agglom.cache.writer import write_cache
    from agglom.data.readers import eval_loader

    split = cfg.data.val_split
    batches = list(eval_loader(cfg, split))
    for t in teachers:
        card = zoo.load_card(t)
        online = zoo.build_teacher(card, input_mean=list(cfg.student.mean), input_std=list(cfg.student.std),
                                   device=device)
        with torch.no_grad():
            outs = [online(b["image"].to(device)) for b in batches]
        ref_s = torch.cat([o.summary.float().cpu() for o in outs])
        ref_p = torch.cat([o.spatial.float().cpu() for o in outs])
        keys = [k for b in batches for k in b["key"]]
        bf16 = 2 * (ref_s.shape[1] + ref_p[0].numel())
        for label, dtype, pool in (("fp16", "fp16", 1), ("int8", "int8", 1), ("int8+pool2", "int8", 2)):
            d = out / f"{label}"
            with quiet():
                write_cache(cfg, [t], str(d), dtype=dtype, pool=pool, splits=[split], device=device,
                            batch_size=int(cfg.data.batch_size))
            c = open_cache(str(d), t, cfg, card.digest(), split=split)
            got = c.lookup(keys)
            cos_s = F.cosine_similarity(got["summary"], ref_s, dim=-1)
            cos_p = F.cosine_similarity(got["spatial"], pool_spatial(ref_p, pool), dim=1).flatten(1).mean(1)
            full = F.interpolate(got["spatial"], size=ref_p.shape[-2:], mode="bilinear", align_corners=False) \
                if pool > 1 else got["spatial"]
            cos_full = F.cosine_similarity(full, ref_p, dim=1).flatten(1).mean(1)
            cos = min(float(cos_s.mean()), float(cos_p.mean()))
            nbytes = float(c.manifest["bytes_per_sample"])
            ok = cos >= 0.99 and nbytes <= 0.25 * bf16
            rows.add("f", f"cache {card.name} {label} (cos {cos:.4f}; full-grid cos {float(cos_full.mean()):.4f})",
                     nbytes, float(bf16), "B/sample", "cos>=0.99 at <=0.25x bf16", ok,
                     summary_cos=float(cos_s.mean()), spatial_cos=float(cos_p.mean()),
                     spatial_cos_min=float(cos_p.min()), full_grid_cos=float(cos_full.mean()),
                     disk_bytes_per_sample=c.manifest.get("disk_bytes_per_sample"), samples=len(keys))




def bench_online_cached(rows: Rows, cfg_on, cfg_ca, s: Dict[str, Any], gemm: float, rss0: Dict[str, float],
                        realistic: bool, cache_s: float) -> None:
    """Sections b, c, e, g: online vs cached teachers and agglom's loop vs a plain one (interleaved), the runs' peak
    RSS, and their FLOP utilisation against the GEMM ceiling."""
    from benchmarks.common import median_rate, peak_rss_mib

    res = interleave({"online": lambda: run_train(cfg_on), "cached": lambda: run_train(cfg_ca),
                      "plain": lambda: run_plain(cfg_on, s["device"])}, s["rounds"])
    b = s["batch"]
    r_on, r_ca, r_pl = (median_rate(res[k]["step_s"], b) for k in ("online", "cached", "plain"))
    tname = "ViT-B/L teachers" if realistic else "tiny demo teachers"
    rows.add("b", f"train samples/s, cached vs online ({tname})", r_ca, r_on, "samples/s", ">= 3x",
             r_ca >= 3 * r_on, cache_write_s=cache_s)
    rows.add("c", "engine overhead: agglom loop vs plain PyTorch loop", r_on, r_pl, "samples/s",
             ">= 0.95x (overhead <= 5%)", r_on >= 0.95 * r_pl)
    rss = peak_rss_mib()
    rows.add("e", "peak RSS, training (process; workers max)", rss["self"], rss0["self"], "MiB", "", None,
             children_mib=rss["children"], note="baseline = peak RSS before any training (imports + data)")
    gemm = ceiling_after(gemm, s)
    for k, rate in (("online", r_on), ("cached", r_ca)):
        fps = res[k].get("flops_per_sample")
        if fps:
            rows.add("g", f"FLOP utilisation, training ({k} teachers)", fps * rate / 1e9, gemm / 1e9, "GFLOP/s",
                     "", None, ratio=fps * rate / gemm, flops_per_sample=fps)


def ceiling_after(gemm: float, s: Dict[str, Any]) -> float:
    """The GEMM ceiling for rows measured just now: the best of the bench's first measurement and one taken right
    after the runs it divides, so that a machine slowed down at the start does not overstate a utilisation."""
    from benchmarks.common import gemm_rate

    return max(gemm, gemm_rate(s["device"], s["gemm_n"]))


def bench_wide(rows: Rows, root: Path, work: Path, s: Dict[str, Any], cards: Path) -> None:
    """Section b with teachers whose forward dominates the step (the demo's tiny teachers cost less than the
    student, as foundation models do not)."""
    from benchmarks.common import make_cfg, median_rate, wide_cards

    wide = wide_cards(cards)
    wcache = work / "cache-wide"
    cfg_won = make_cfg(root, work, s, "wide-online", wide)
    wcache_s = write_train_cache(cfg_won, wide, wcache, s["device"])
    cfg_wca = make_cfg(root, work, s, "wide-cached", wide, cache=str(wcache))
    cfg_won.optim.steps = cfg_wca.optim.steps = max(6, s["steps"] // 2)
    wres = interleave({"online": lambda: run_train(cfg_won), "cached": lambda: run_train(cfg_wca)}, s["rounds"])
    w_on, w_ca = (median_rate(wres[k]["step_s"], s["batch"]) for k in ("online", "cached"))
    fps = wres["online"].get("flops_per_sample") or 0
    fps_c = wres["cached"].get("flops_per_sample") or 1
    rows.add("b", f"train samples/s, cached vs online (wide teachers, {fps / fps_c:.1f}x the FLOPs)", w_ca, w_on,
             "samples/s", ">= 3x", w_ca >= 3 * w_on, cache_write_s=wcache_s, flops_online=fps, flops_cached=fps_c)


def bench_deepspeed(rows: Rows, cfg_ca, cfg_ds, rounds: int) -> None:
    """Section d: DeepSpeed ZeRO-2 against the torch strategy, cached teachers, so the step is the student's.

    Not interleaved: the torch strategy's close() destroys the process group DeepSpeed keeps for reuse in this
    process, so a DeepSpeed run after a torch run that follows a DeepSpeed run fails; torch runs first."""
    import statistics

    dres = {**interleave({"torch": lambda: run_train(cfg_ca)}, rounds),
            **interleave({"deepspeed": lambda: run_train(cfg_ds)}, rounds)}
    st = statistics.median(dres["torch"]["step_s"])
    sd = statistics.median(dres["deepspeed"]["step_s"])
    rows.add("d", "step time, DeepSpeed ZeRO-2 vs torch strategy", sd * 1e3, st * 1e3, "ms/step",
             "<= 1.15x", sd <= 1.15 * st)


def timm_step(cfg, dev, batch: int) -> Tuple[Callable[[], None], float]:
    """The bench student alone, as timm builds it: one step (forward_features, a mean loss, backward and the loop's
    AdamW on random images of the run's size and batch), and its training FLOPs per sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from agglom.model.student import build_student
    from agglom.train.optim import adamw, param_groups
    from agglom.train.setup import in_chans_of

    size = int(cfg.data.image_size)
    model = build_student(cfg.student, size, in_chans_of(cfg), len(cfg.teachers)).to(dev).train()
    x = torch.randn(batch, in_chans_of(cfg), size, size, device=dev)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.forward_features(x[:2])
    opt = adamw(param_groups(model, cfg.optim.weight_decay), cfg.optim, dev)  # the loop's own AdamW

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model.forward_features(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, 3 * counter.get_total_flops() / 2


def _timed(step: Callable[[], None], dev) -> float:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timm_step_rate(cfg, device: str, batch: int, steps: int) -> Dict[str, float]:
    """:func:`timm_step` timed per step (median). No heads, teachers, data or losses, so its FLOP rate is what this
    width reaches in PyTorch on this device: the reference the training rows compare to."""
    import statistics

    import torch

    dev = torch.device(device)
    step, fps = timm_step(cfg, dev, batch)
    times = [_timed(step, dev) for _ in range(steps + 2)][2:]  # the first two: allocation and kernel selection
    return {"flops_per_sample": fps, "samples_per_s": batch / statistics.median(times)}


def agglom_step(cfg, dev) -> Tuple[Callable[[], None], float, int]:
    """agglom's training step on one fixed batch of the run's reader, without the loop: targets (online teachers or
    the cached features the reader attached), student, heads, normalisers, losses, group objectives, backward,
    gradient clipping and the loop's AdamW; with its training FLOPs per sample and the batch size."""
    import torch

    from agglom.data.readers import train_loader
    from agglom.distill.setup import build_teachers, stats_batches
    from agglom.distill.task import AgglomTask, teacher_spec
    from agglom.train.loop import seed_everything
    from agglom.train.optim import adamw
    from agglom.train.setup import group_names, in_chans_of

    seed_everything(cfg.seed * 1000)
    teachers = build_teachers(cfg, dev)
    task = AgglomTask(cfg, [teacher_spec(e, teachers[e.name]) for e in cfg.teachers], teachers, group_names(cfg),
                      in_chans_of(cfg))
    task.model.to(dev)
    task.attach(task.model, dev, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"))
    task.fit_normalisers(stats_batches(cfg))
    opt = adamw(task.param_groups(), cfg.optim, dev)
    task.train()
    batch = next(iter(train_loader(cfg, epoch=0, attach=task.worker_reads())))
    params = list(task.model.parameters())
    clip = float(cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else float("inf")  # as the engines clip

    def step() -> None:
        loss = task(batch)["loss"]
        bool(torch.isfinite(loss))  # the loop's finiteness checks read back the loss and the gradient norm
        loss.backward()
        bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip)))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, task.flops_per_sample(batch), int(batch["image"].shape[0])


def bench_step_alone(rows: Rows, cfgs: Dict[str, Any], s: Dict[str, Any], reps: int) -> None:
    """Section g: agglom's own step on one batch (:func:`agglom_step`, no data loading or loop) against the timm step,
    interleaved step by step in this process (each rate a median over ``reps``): what agglom's heads, targets,
    losses and objectives cost, without the reader's workers and the run-to-run spread of whole training runs."""
    import statistics

    import torch

    dev = torch.device(s["device"])
    for mode, cfg in cfgs.items():
        step, fps, batch = agglom_step(cfg, dev)
        ref, ref_fps = timm_step(cfg, dev, batch)
        times: Dict[str, list] = {"step": [], "timm": []}
        for i in range(reps + 2):
            for k, fn in (("step", step), ("timm", ref)):
                t = _timed(fn, dev)
                if i >= 2:  # the first two: allocation and kernel selection
                    times[k].append(t)
        rate = fps * batch / statistics.median(times["step"])
        ref_rate = ref_fps * batch / statistics.median(times["timm"])
        rows.add("g", f"FLOP rate, agglom's step alone on one batch vs the student's timm step ({mode} teachers)",
                 rate / 1e9, ref_rate / 1e9, "GFLOP/s", f">= {STEP_VS_TIMM_TARGET}x",
                 rate >= STEP_VS_TIMM_TARGET * ref_rate, flops_per_sample=fps, reps=reps)


def bench_timm_reference(rows: Rows, cfg_on, cfg_ca, s: Dict[str, Any], gemm: float) -> None:
    """Section g's reference row, the student's own timm step at the bench's width, batch and size; then the training
    step's FLOP rate against it (:func:`add_step_vs_timm`) and agglom's step alone against it
    (:func:`bench_step_alone`), online and cached."""
    r = timm_step_rate(cfg_ca, s["device"], s["batch"], max(4, s["steps"]))
    rate = r["flops_per_sample"] * r["samples_per_s"]
    gemm = ceiling_after(gemm, s)
    rows.add("g", "FLOP utilisation, the student's timm step alone (no heads, teachers or data)",
             rate / 1e9, gemm / 1e9, "GFLOP/s", "", None, ratio=rate / gemm, flops_per_sample=r["flops_per_sample"],
             samples_per_s=r["samples_per_s"])
    add_step_vs_timm(rows)
    bench_step_alone(rows, {"online": cfg_on, "cached": cfg_ca}, s, max(4, s["steps"]))



def add_step_vs_timm(rows: Rows) -> None:
    """Section g's step-vs-timm rows: the FLOP rate of agglom's training step (online and cached teachers) over the
    student's own timm step's, both from the utilisation rows above (GFLOP/s, measured in this process). What agglom
    adds to the step (heads, normalisers, losses, objectives, data, bookkeeping) is what keeps it below 1."""
    g = [r for r in rows.rows if r["section"] == "g"]
    timm = next((r for r in g if "timm step alone" in r["metric"]), None)
    if timm is None or not timm["value"]:
        return
    for mode in ("online", "cached"):
        step = next((r for r in g if r["metric"] == f"FLOP utilisation, training ({mode} teachers)"), None)
        if step is None or not step["value"]:
            continue
        ratio = step["value"] / timm["value"]
        rows.add("g", f"FLOP rate, training step vs the student's timm step ({mode} teachers)", step["value"],
                 timm["value"], "GFLOP/s", f">= {STEP_VS_TIMM_TARGET}x", ratio >= STEP_VS_TIMM_TARGET)
