"""What `agglom data synth | pack | join | info` do and print: each function does the work for its command's parsed
options (:mod:`agglom.data.args`) and returns the text the command prints."""
from __future__ import annotations

import time
from typing import Any

from agglom.config.load import ConfigError


def run_synth(cfg: Any) -> str:
    """Write the synthetic benchmark (and its no-bias twin with ``twin=true``); the datasheet summary + a line."""
    from agglom.data.args import check_writer_options
    from agglom.data.synth import SynthParams, check_size, write_synth
    from agglom.data.writer import summary_table

    params = SynthParams.from_config(cfg)
    try:
        params.validate()
        check_size(params, int(cfg.unlabeled), bool(cfg.twin))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_writer_options(cfg)
    t0 = time.perf_counter()
    sheet = write_synth(cfg.out, params, twin=cfg.twin, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                        shard_size=cfg.shard_size, force=cfg.force, unlabeled=int(cfg.unlabeled))
    return (summary_table(sheet) + f"\n\nwrote {sheet['samples']} samples to {cfg.out}"
            + (f" (+ twin in {cfg.out}/twin)" if cfg.twin else "") + f" in {time.perf_counter() - t0:.1f}s")


def run_pack(cfg: Any) -> str:
    """Pack an image folder or a CSV into shards (:func:`agglom.data.pack.pack`), or with ``resplit=`` rewrite
    existing shards with a patient-level split (:func:`agglom.data.resplit.resplit`); the summary + what was
    skipped."""
    from agglom.data.writer import summary_table

    if cfg.get("resplit"):
        from agglom.data.resplit import resplit

        sheet = resplit(cfg)
    else:
        from agglom.data.pack import pack

        sheet = pack(cfg)
    skipped = sheet.get("skipped") or {}
    return (summary_table(sheet) + f"\n\nwrote {sheet['samples']} samples to {cfg.out}; "
            f"skipped {sum(skipped.values())}" + (f" {skipped}" if skipped else ""))


def run_join(cfg: Any) -> str:
    """Join an attribute table onto existing shards as a sidecar (:func:`agglom.data.join.join_onto_shards`)."""
    from agglom.data.join import join_onto_shards

    out, report = join_onto_shards(cfg.root, cfg.shards, cfg.csv, cfg.on, cfg.match, list(cfg.attr_cols),
                                   list(cfg.splits), cfg.out, patient_col=cfg.get("patient_col"))
    text = (f"agglom data join: {report['matched']} samples matched, {report['samples_without_row']} without a row, "
            f"{report['rows_without_sample']} rows without a sample -> {out}\n"
            f"  use it with data.sidecars=[{out}] (and groups.by=<attribute>)")
    if "patients" in report:
        leaked = report["patients_in_two_splits"]
        text += (f"\n  patients: {report['patients']}, in two splits of these shards: {leaked}"
                 + (f"\n  warning: {leaked} patients have images in more than one split; rewrite the shards with a "
                    f"patient-level split: agglom data pack out=NEW_FOLDER resplit={cfg.root} patient_sidecar={out}"
                    if leaked else ""))
    return text


def run_info(cfg: Any) -> str:
    """The datasheet summary of the dataset folder ``cfg.root``."""
    from agglom.data.writer import read_datasheet, summary_table

    sheet = read_datasheet(cfg.root)
    if sheet is None:
        raise ConfigError(f"no dataset.json in {cfg.root}")
    return summary_table(sheet)


__all__ = ["run_synth", "run_pack", "run_join", "run_info"]
