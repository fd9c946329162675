"""imgclf models [--blocks NAME]: the registered architectures, or the blocks of one backbone."""

from __future__ import annotations

import argparse

HELP = "list the registered architectures, or the blocks of one backbone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", metavar="NAME", help="print this backbone's blocks (what finetune.unfreeze_blocks counts)")


def run(args: argparse.Namespace) -> int:
    from app.models import list_models
    from app.models.backbones import BACKBONES, describe_blocks

    if args.blocks:
        name, blocks = describe_blocks(args.blocks)
        print(f"{name}: {len(blocks)} blocks, input to output (finetune.unfreeze_blocks=K unfreezes the last K)")
        for i, (block, layers) in enumerate(blocks, start=1):
            print(f"  {i:3d}  {block:16s} {layers:4d} layers")
        return 0
    print(f"{'name':18s} {'family':16s} native size")
    for name in list_models():
        spec = BACKBONES.get(name)
        print(f"{name:18s} {spec.family if spec else 'baseline':16s} {spec.native_size if spec else '-'}")
    return 0
