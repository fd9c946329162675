"""imgclf explain RUN anatomy|feature-maps IMAGE|gradcam: what a trained model computes."""

from __future__ import annotations

import argparse

from pipelines.errors import OptionError

HELP = "feature maps, channel sums, Grad-CAM or the anatomy of a trained run (PNG / Markdown in RUN/explain/)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory written by train")
    views = parser.add_subparsers(dest="view", required=True, metavar="VIEW")
    anatomy = views.add_parser("anatomy", help="per layer: output shape (NHWC and NCHW), parameters, kernel, stride, padding, receptive field, jump")
    anatomy.add_argument("--output", help="folder for anatomy.md (default RUN/explain/)")
    maps = views.add_parser("feature-maps", help="one image's activations per layer (a grid of channels) and each layer's channel sum over it")
    maps.add_argument("image", help="an image file")
    maps.add_argument("--layers", nargs="+", help="layer names (default: the last activation of each block; `anatomy` lists them)")
    maps.add_argument("--output", help="folder for the PNGs (default RUN/explain/)")
    cam = views.add_parser("gradcam", help="Grad-CAM heat maps over a grid of labeled images, with true and predicted labels")
    cam.add_argument("--data", help="labeled folder or CSV (default: the run's validation split)")
    cam.add_argument("--images", help="image folder for a CSV given with --data")
    cam.add_argument("--mistakes", action="store_true", help="the most confident mistakes instead of the first images")
    cam.add_argument("--class", dest="class_name", metavar="NAME", help="the heat maps of this class, on images of this class")
    cam.add_argument("--count", type=int, default=16, help="images in the grid (default 16)")
    cam.add_argument("--layer", help="the layer to explain (default: the last spatial activation)")
    cam.add_argument("--output", help="folder for the PNG (default RUN/explain/)")


def run(args: argparse.Namespace) -> int:
    from app import explain
    from app.runs import load_run

    if args.view == "gradcam" and args.count < 1:
        raise OptionError(f"--count {args.count}: give at least 1 image")
    run_ = load_run(args.run)
    if args.view == "anatomy":
        path = explain.explain_anatomy(run_, args.output)
        print(path.read_text(), end="")
        print(f"written: {path}")
    elif args.view == "feature-maps":
        for path in explain.explain_feature_maps(run_, args.image, args.layers, args.output):
            print(f"written: {path}")
    else:
        result = explain.explain_gradcam(run_, args.data, args.images, args.mistakes, args.class_name, args.count, args.layer, args.output)
        print(f"written: {result.path} ({result.shown} images, layer {result.layer})")
    return 0
