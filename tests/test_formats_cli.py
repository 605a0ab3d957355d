"""caffe-compat upgrade-net-proto-text / -binary and inspect, as a user runs them."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from caffe_compat.cli import main
from caffe_compat.io.caffemodel import load_weights


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_upgrade_net_proto_text_matches_caffe(fixtures, tmp_path):
    out = tmp_path / "up.prototxt"
    result = _run("upgrade-net-proto-text", fixtures / "upgrade" / "v1_train_val.prototxt", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (fixtures / "upgrade" / "train_val_upgraded.prototxt").read_bytes()
    assert "Wrote upgraded NetParameter text proto" in result.output


def test_upgrade_net_proto_binary_matches_caffe(fixtures, tmp_path):
    out = tmp_path / "up.caffemodel"
    result = _run("upgrade-net-proto-binary", fixtures / "upgrade" / "v1_weights.caffemodel", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (fixtures / "upgrade" / "weights_upgraded.caffemodel").read_bytes()


def test_upgrading_a_current_net_copies_it_and_says_so(fixtures, tmp_path):
    out = tmp_path / "same.prototxt"
    result = _run("upgrade-net-proto-text", fixtures / "upgrade" / "deploy_upgraded.prototxt", out)
    assert result.exit_code == 0 and "File already in latest proto format" in result.output
    assert out.read_bytes() == (fixtures / "upgrade" / "deploy_upgraded.prototxt").read_bytes()


def test_upgrade_problems_exit_1_but_still_write(tmp_path):
    source = tmp_path / "v0.prototxt"
    source.write_text('layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x" }\n'
                      'input: "x"\n')
    out = tmp_path / "out.prototxt"
    result = _run("upgrade-net-proto-text", source, out)
    assert result.exit_code == 1
    assert "unknown parameter num_output for layer type relu" in result.output
    assert 'type: "ReLU"' in out.read_text()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    source = tmp_path / "bad.prototxt"
    source.write_text('layers {\n  name: "x"\n  bogus: 1\n}\n')
    out = tmp_path / "out.prototxt"
    result = _run("upgrade-net-proto-text", source, out)
    assert result.exit_code == 1 and not out.exists()
    assert result.output.strip().count("\n") == 0
    assert re.search(r"bad\.prototxt:3:3: .*\"bogus\"", result.output)
    result = _run("upgrade-net-proto-binary", source, tmp_path / "out.caffemodel")
    assert result.exit_code == 1 and "not a valid Caffe NetParameter" in result.output


def _table(output: str) -> dict[str, list[str]]:
    """Rows of inspect's layer table by layer name."""
    rows = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3 and "->" in line and cells[:2] != ["layer", "type"]:
            rows[cells[0]] = cells
    return rows


def test_inspect_nsfw_deploy_prototxt(nsfw_dir, fixtures):
    result = _run("inspect", nsfw_dir / "deploy.prototxt")
    assert result.exit_code == 0, result.output
    rows = _table(result.output)
    assert len(rows) == 229  # every layer of the deploy net
    assert rows["data"][3] == "(1,3,224,224)"
    assert rows["conv_1"][3:5] == ["(1,64,112,112)", "(64,3,7,7) (64)"]
    assert rows["pool"][3] == "(1,1024,1,1)" and rows["prob"][3] == "(1,2)"
    assert rows["fc_nsfw"][4:] == ["(2,1024) (2)", "2,050"]
    # Blob shapes Caffe itself reported for this net (run with batch 2; fixtures/nsfw/blob_stats.json).
    stats = json.loads((fixtures / "nsfw" / "blob_stats.json").read_text())
    tops = {cells[2].split("-> ")[-1]: cells[3] for cells in rows.values()}
    for blob, stat in stats.items():
        shape = tops[blob.removesuffix("_raw")].strip("()").split(",")
        assert [int(d) for d in shape[1:]] == stat["shape"][1:], blob
    assert "total: 229 layers (160 with parameters), 5,944,567 parameters" in result.output


def test_inspect_nsfw_caffemodel(nsfw_dir):
    result = _run("inspect", nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    assert result.exit_code == 0, result.output
    rows = _table(result.output)
    weights = load_weights(nsfw_dir / "resnet_50_1by2_nsfw.caffemodel")
    for name, arrays in weights.items():
        shapes = " ".join("(" + ",".join(map(str, a.shape)) + ")" for a in arrays)
        assert shapes in rows[name], name
    assert "5,944,567 parameters" in result.output


def test_inspect_other_files(fixtures):
    mean = _run("inspect", fixtures / "mean" / "train_raw32_mean.binaryproto").output
    assert "shape (1,3,32,32)" in mean and "per-channel means: 117.702, 117.301, 129.405" in mean
    state = _run("inspect", fixtures / "solver" / "sgd_step" / "lenet_iter_6.solverstate").output
    assert "iter 6, current_step 1" in state and "history: 13 blobs" in state
    solver = _run("inspect", fixtures / "solver" / "adam" / "solver.prototxt").output
    assert "solver (Adam)" in solver and "momentum2: 0.999" in solver
    lenet = _run("inspect", fixtures / "solver" / "lenet_train_val.prototxt", "-phase", "TRAIN").output
    assert "ip2" in lenet and "phase TRAIN" in lenet


def test_inspect_lmdbs(fixtures):
    raw = _run("inspect", fixtures / "lmdb" / "edge_raw16_lmdb")
    assert raw.exit_code == 0, raw.output
    assert "8 entries" in raw.output and "raw uint8 x8" in raw.output and "(3,16,16) x8" in raw.output
    labels = dict(re.findall(r"(-?\d+): (\d+)", raw.output.split("labels:")[1]))
    assert labels == {"-3": "1", "0": "1", "5": "1", "7": "2", "9": "1", "12": "1", "25": "1"}
    encoded = _run("inspect", fixtures / "lmdb" / "train_encoded_lmdb").output
    assert "encoded jpeg x10" in encoded and "encoded png x5" in encoded and "encoded bmp x3" in encoded


@pytest.mark.parametrize("name, message", [
    ("nothing.caffemodel", "no such file"),
    ("images", "not an LMDB"),
])
def test_inspect_errors(fixtures, name, message):
    result = _run("inspect", fixtures / name)
    assert result.exit_code == 1 and message in result.output


def test_inspect_sniffs_files_without_caffe_extensions(fixtures, tmp_path):
    copies = {
        "model.bin": (fixtures / "upgrade" / "weights_upgraded.caffemodel", "caffemodel, net 'LegacyV1Net'"),
        "state.dat": (fixtures / "solver" / "adam" / "lenet_iter_6.solverstate", "SolverState"),
        "mean.dat": (fixtures / "mean" / "val_raw32_mean.binaryproto", "BlobProto"),
        "net.txt": (fixtures / "upgrade" / "v1_deploy.prototxt", "net 'LegacyV1Net'"),
    }
    for name, (source, expected) in copies.items():
        (tmp_path / name).write_bytes(source.read_bytes())
        result = _run("inspect", tmp_path / name)
        assert result.exit_code == 0 and expected in result.output, (name, result.output)
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    result = _run("inspect", tmp_path / "noise.bin")
    assert result.exit_code == 1 and "not a prototxt, caffemodel, solverstate, binaryproto or LMDB" in result.output
