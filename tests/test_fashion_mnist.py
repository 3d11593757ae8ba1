"""The real thing: one epoch of LeNet-5 on Fashion-MNIST reaches 0.85 test accuracy.

CI installs Debian's dataset-fashion-mnist; elsewhere this skips when the data is
absent. About 20 s on two CPU cores.
"""
import os

import pytest

from gpunet.cli import main


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                    and not os.environ.get("GPUNET_DATA"),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_one_epoch_of_lenet5_reaches_85_percent(tmp_path, capsys):
    code = main(["train", "--model", "lenet5", "--batch-norm", "--dataset", "fashion-mnist",
                 "--epochs", "1", "--dev-size", "0", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path)])
    assert code == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("test accuracy")][0]
    accuracy = float(line.split()[2])
    assert accuracy >= 0.85, line
