"""CLI subcommands for Caffe's example converters (registered on import by caffe_compat.cli).

``convert-mnist-data``, ``convert-cifar-data`` and ``convert-mnist-siamese-data``: the tools
``create_mnist.sh``, ``create_cifar10.sh`` and ``create_mnist_siamese.sh`` call as
``build/examples/{mnist,cifar10,siamese}/convert_*_data.bin``; same arguments and flags, so the
scripts run through ``caffe-compat link-tools`` links.
"""

from __future__ import annotations

import click

from caffe_compat.cli import main
from caffe_compat.cli.options import caffe_option


@main.command("convert-mnist-data")
@click.argument("image_file", metavar="INPUT_IMAGE_FILE", type=click.Path(dir_okay=False))
@click.argument("label_file", metavar="INPUT_LABEL_FILE", type=click.Path(dir_okay=False))
@click.argument("db_path", metavar="OUTPUT_DB_FILE", type=click.Path())
@caffe_option("backend", default="lmdb", show_default=True, help="The backend for storing the result: lmdb or leveldb.")
@caffe_option("overwrite", is_flag=True, help="[extra] Replace OUTPUT_DB_FILE if it already exists.")
def convert_mnist_data_cmd(image_file: str, label_file: str, db_path: str, backend: str, overwrite: bool) -> None:
    """Convert MNIST's IDX files (gunzipped) to a Datum LMDB or LevelDB (Caffe's convert_mnist_data)."""
    from caffe_compat.data.mnist import convert_mnist_data

    count = convert_mnist_data(image_file, label_file, db_path, backend, overwrite)
    click.echo(f"convert-mnist-data: wrote {count} records to {db_path}", err=True)


@main.command("convert-cifar-data")
@click.argument("input_folder", type=click.Path(file_okay=False))
@click.argument("output_folder", type=click.Path(file_okay=False))
@click.argument("db_type", metavar="DB_TYPE")
@caffe_option("overwrite", is_flag=True, help="[extra] Replace the two databases if they already exist.")
def convert_cifar_data_cmd(input_folder: str, output_folder: str, db_type: str, overwrite: bool) -> None:
    """Convert CIFAR-10's binary batches in INPUT_FOLDER to OUTPUT_FOLDER/cifar10_{train,test}_DB_TYPE
    (DB_TYPE lmdb or leveldb; Caffe's convert_cifar_data)."""
    from caffe_compat.data.cifar import convert_cifar_data

    train, test = convert_cifar_data(input_folder, output_folder, db_type, overwrite)
    click.echo(f"convert-cifar-data: wrote {train} training and {test} test records to {output_folder}", err=True)


@main.command("convert-mnist-siamese-data")
@click.argument("image_file", metavar="INPUT_IMAGE_FILE", type=click.Path(dir_okay=False))
@click.argument("label_file", metavar="INPUT_LABEL_FILE", type=click.Path(dir_okay=False))
@click.argument("db_path", metavar="OUTPUT_DB_FILE", type=click.Path())
@caffe_option("seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="[extra] Seed of the random pairs (Caffe's is from the clock; the one used is logged).")
@caffe_option("overwrite", is_flag=True, help="[extra] Replace OUTPUT_DB_FILE if it already exists.")
def convert_mnist_siamese_data_cmd(image_file: str, label_file: str, db_path: str, seed: int | None,
                                   overwrite: bool) -> None:
    """Convert MNIST's IDX files to a LevelDB of random image pairs, label 1 for the same digit
    (Caffe's convert_mnist_siamese_data)."""
    from caffe_compat.data.mnist import convert_mnist_siamese_data

    count = convert_mnist_siamese_data(image_file, label_file, db_path, seed, overwrite)
    click.echo(f"convert-mnist-siamese-data: wrote {count} pairs to {db_path}", err=True)
