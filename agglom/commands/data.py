"""`agglom data synth | pack | info | join`: write the synthetic benchmark, pack images into shards (or, with
``resplit=``, rewrite existing shards with a patient-level split), show a datasheet, join an attribute table onto
existing shards. The options are :mod:`agglom.data.args`, the work :mod:`agglom.data.run`; this module parses and
prints."""
from __future__ import annotations

from typing import Any, Callable

from agglom.commands import Command
from agglom.data.args import InfoConfig, JoinConfig, PackConfig, SynthConfig


def _printing(name: str) -> Callable[[Any], int]:
    """The run function of a data command: ``agglom.data.run.<name>(cfg)``, its text printed."""

    def run(cfg: Any) -> int:
        from agglom.data import run as data_run

        print(getattr(data_run, name)(cfg))
        return 0

    return run


synth = Command(schema=SynthConfig, run=_printing("run_synth"), positional="out",
                help="write the synthetic bias benchmark (shortcut + rare site; optional no-bias twin)")
pack = Command(schema=PackConfig, run=_printing("run_pack"), positional="out",
               help="pack an image folder or a CSV (+ DICOM) into WebDataset shards with a datasheet (per patient: "
                    "patient_col=, resplit=)")
info = Command(schema=InfoConfig, run=_printing("run_info"), positional="root", help="print a dataset's datasheet summary")
join = Command(schema=JoinConfig, run=_printing("run_join"), positional="root",
               help="join an attribute CSV (keyed by sample key or file name) onto existing shards as a sidecar")
