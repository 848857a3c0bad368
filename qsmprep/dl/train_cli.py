"""``qsmprep-train``: the command line of NSIDL training (:func:`qsmprep.dl.train.train`).

    qsmprep-train --config X.yaml --out DIR [--device cpu|cuda|auto] [--max-minutes M] [--max-steps N]
    python -m qsmprep.dl.train_cli ...  (or ``python -m qsmprep.dl.train ...``)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qsmprep.dl.train import load_config, train


def _set_key(cfg: dict, item: str) -> None:
    import yaml

    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE (e.g. data.batch_size=1), got {item!r}.")
    key, val = item.split("=", 1)
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(val)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qsmprep-train", description="Train the NSIDL dipole-inversion network on synthetic data.")
    ap.add_argument("--config", help="YAML training config (defaults if omitted)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint, logs, exported weights)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    ap.add_argument("--device", help="override the config: auto, cpu or cuda")
    ap.add_argument("--max-minutes", type=float, help="override budget.max_minutes (wall clock)")
    ap.add_argument("--max-steps", type=int, help="override budget.max_steps")
    ap.add_argument("--val-dir", help="override val.dir (folder of *.npz heads)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config entry, e.g. --set data.max_voxels=60000 (value parsed as YAML)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    cfg = load_config(args.config)
    if args.device:
        cfg["device"] = args.device
    if args.max_minutes is not None:
        cfg["budget"]["max_minutes"] = args.max_minutes
    if args.max_steps is not None:
        cfg["budget"]["max_steps"] = args.max_steps
    if args.val_dir:
        cfg["val"]["dir"] = args.val_dir
    for item in args.set:
        _set_key(cfg, item)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = train(cfg, args.out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
