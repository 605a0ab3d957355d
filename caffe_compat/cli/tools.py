"""Caffe's remaining tools: ``device_query``, ``extract_features``, ``upgrade_solver_proto_text``;
plus ``convert-db`` (LevelDB -> LMDB) and ``link-tools`` (the busybox links, see ``busybox``)."""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option
from caffe_compat.errors import CaffeCompatError


@main.command("device-query")
@caffe_option("gpu", default="all", show_default=True, help="GPU ids to query: 0, 0,1 or all")
def device_query_command(gpu: str) -> None:
    """Print each GPU's properties (Caffe's ``caffe device_query -gpu N``)."""
    import torch

    from caffe_compat.solver.caffe_log import CaffeLog
    from caffe_compat.solver.distributed import parse_gpus

    if not torch.cuda.is_available():
        raise CaffeCompatError("device_query: no CUDA device is visible (torch.cuda.device_count() is 0); "
                               "caffe-compat runs on the CPU here")
    log = CaffeLog()
    ids = parse_gpus(gpu)
    log.info("caffe.cpp:138", f"Querying GPUs {','.join(map(str, ids))}")
    for device in ids:
        p = torch.cuda.get_device_properties(device)
        rows = [("Device id", device), ("Major revision number", p.major), ("Minor revision number", p.minor),
                ("Name", p.name), ("Total global memory", p.total_memory),
                ("Number of multiprocessors", p.multi_processor_count)]
        rows += [(label, getattr(p, attr)) for label, attr in (("Warp size", "warp_size"),
                 ("Maximum threads per multiprocessor", "max_threads_per_multi_processor"),
                 ("L2 cache size", "L2_cache_size")) if hasattr(p, attr)]
        for label, value in rows:
            log.info("common.cpp:178", f"{label + ':':<31}{value}")


@main.command("extract-features")
@click.argument("pretrained", metavar="PRETRAINED_NET_PARAM", type=click.Path(dir_okay=False))
@click.argument("proto", metavar="FEATURE_EXTRACTION_PROTO_FILE", type=click.Path(dir_okay=False))
@click.argument("blobs", metavar="BLOB_NAME1[,NAME2,...]")
@click.argument("databases", metavar="SAVE_FEATURE_DATASET_NAME1[,NAME2,...]")
@click.argument("batches", metavar="NUM_MINI_BATCHES", type=click.IntRange(min=1))
@click.argument("db_type", metavar="DB_TYPE", type=click.Choice(["lmdb", "leveldb"]))
@click.argument("mode", metavar="[CPU/GPU]", required=False, default="CPU",
                type=click.Choice(["CPU", "GPU"], case_sensitive=False))
@click.argument("device_id", metavar="[DEVICE_ID=0]", required=False, default=0, type=click.IntRange(min=0))
def extract_features_command(pretrained, proto, blobs, databases, batches, db_type, mode, device_id) -> None:
    """Run a net in TEST phase over its data source; store the blobs as Datums, one DB per blob
    (Caffe's ``extract_features``)."""
    import torch

    from caffe_compat.net.builder import load_net
    from caffe_compat.net.features import extract_features
    from caffe_compat.net.registry import TEST
    from caffe_compat.solver.caffe_log import CaffeLog

    log = CaffeLog()
    device = torch.device("cpu")
    if mode.upper() == "GPU" and torch.cuda.is_available():
        log.error("extract_features.cpp:54", "Using GPU")
        log.error("extract_features.cpp:56", f"Using Device_id={device_id}")
        device = torch.device("cuda", device_id)
    else:
        if mode.upper() == "GPU":
            log.warning("extract_features.cpp:54", "GPU mode asked for but no CUDA device is available; using the CPU")
        log.error("extract_features.cpp:62", "Using CPU")
    net = load_net(proto, TEST, weights=pretrained).to(device)
    names, paths = blobs.split(","), databases.split(",")
    for path in paths:
        log.info("extract_features.cpp:124", f"Opening dataset {path}")
    log.error("extract_features.cpp:131", "Extracting Features")
    extract_features(net, names, paths, batches, db_type, on_progress=lambda blob, n: log.error(
        "extract_features.cpp:160", f"Extracted features of {n} query images for feature blob {blob}"))
    log.error("extract_features.cpp:180", "Successfully extracted the features!")


@main.command("upgrade-solver-proto-text")
@click.argument("input_file", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_file", metavar="OUT", type=click.Path(dir_okay=False))
def upgrade_solver_command(input_file: str, output_file: str) -> None:
    """Upgrade a solver prototxt (``solver_type`` enum -> ``type``), Caffe's upgrade_solver_proto_text."""
    from caffe_compat.io.upgrade_files import upgrade_solver_proto_text

    for line in upgrade_solver_proto_text(input_file, output_file).messages:
        click.echo(line, err=True)


@main.command("convert-db")
@click.argument("source", metavar="LEVELDB")
@click.argument("target", metavar="LMDB")
@click.option("--overwrite", is_flag=True, help="replace an existing LMDB at the target")
def convert_db_command(source: str, target: str, overwrite: bool) -> None:
    """Copy a LevelDB (Caffe's older backend) into a new LMDB with the same keys and values."""
    from caffe_compat.data.leveldb import convert_leveldb_to_lmdb

    count = convert_leveldb_to_lmdb(source, target, overwrite)
    click.echo(f"convert-db: copied {count} records from {source} to {target}", err=True)


@main.command("link-tools")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--target", default=None, help="the executable to link to (default: caffe-compat on PATH)")
@click.option("--force", is_flag=True, help="replace files already there")
def link_tools_command(folder: str, target: str | None, force: bool) -> None:
    """Make links named after Caffe's tools (caffe, convert_imageset, compute_image_mean, ...) in
    FOLDER: each acts as that tool, so ``TOOLS=FOLDER ./script.sh`` runs Caffe's scripts as they are."""
    from caffe_compat.cli.busybox import link_tools

    for link in link_tools(folder, target, force):
        click.echo(str(link))
