import argparse
import os
import pickle
import re

import lightning as L
import pytest
import torch
from torch import nn

from cmkd_lightning.checkpoint import load_state_dict_file, load_weights
from cmkd_lightning.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _trained(name, num_classes=100):
    """A model with non-default weights and BN statistics, plus a real SGD optimizer state."""
    model = create_model(name, num_classes=num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss = nn.functional.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    return model.eval(), optimizer


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def _community_file(tmp_path, model, optimizer, accuracy=79.42):
    """The layout of RepDistiller's `<arch>_vanilla/ckpt_epoch_240.pth`."""
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 240, "model": model.state_dict(), "accuracy": accuracy, "optimizer": optimizer.state_dict()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("accuracy", [79.42, torch.tensor(79.42)])
def test_community_teacher_file_loads_strictly(tmp_path, accuracy):
    teacher, optimizer = _trained("resnet8")
    path = _community_file(tmp_path, teacher, optimizer, accuracy)
    fresh = create_model("resnet8")
    assert not torch.equal(_logits(fresh), _logits(teacher))
    assert load_weights(fresh, path) is fresh
    assert torch.equal(_logits(fresh), _logits(teacher))


def test_data_parallel_prefix_is_removed(tmp_path):
    model, _ = _trained("wrn_16_1")
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert torch.equal(_logits(load_weights(create_model("wrn_16_1"), path)), _logits(model))


def _mdistiller_file(tmp_path, student, teacher):
    """mdistiller's `latest`/`best` files: a DataParallel-wrapped distiller with student and teacher."""
    state = {f"module.student.{k}": v for k, v in student.state_dict().items()}
    state |= {f"module.teacher.{k}": v for k, v in teacher.state_dict().items()}
    path = tmp_path / "best"
    torch.save({"epoch": 240, "model": state, "optimizer": {}, "best_acc": torch.tensor(75.3)}, path)
    return path


def test_mdistiller_student_and_teacher_are_selected_by_part(tmp_path):
    student, _ = _trained("resnet8")
    teacher, _ = _trained("wrn_16_1")
    path = _mdistiller_file(tmp_path, student, teacher)
    assert torch.equal(_logits(load_weights(create_model("resnet8"), path, part="student")), _logits(student))
    assert torch.equal(_logits(load_weights(create_model("wrn_16_1"), path, part="teacher")), _logits(teacher))
    with pytest.raises(ValueError, match=re.escape("pass `part='student'` or `part='teacher'`")):
        load_weights(create_model("resnet8"), path)


def test_mdistiller_student_only_file(tmp_path):
    student, _ = _trained("resnet8")
    path = tmp_path / "student_best"
    torch.save({"model": {f"module.student.{k}": v for k, v in student.state_dict().items()}}, path)
    assert torch.equal(_logits(load_weights(create_model("resnet8"), path)), _logits(student))
    with pytest.raises(ValueError, match=re.escape("to hold keys starting with 'teacher.', but it holds only")):
        load_state_dict_file(path, part="teacher")


class _Distiller(L.LightningModule):
    """Stands in for DistillationModule: the student and teacher live in attributes `student` / `teacher`."""

    def __init__(self):
        super().__init__()
        self.save_hyperparameters()
        self.student = create_model("resnet8", num_classes=10)
        self.teacher = create_model("wrn_16_1", num_classes=10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.student(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9)


def test_lightning_checkpoint_written_by_a_trainer(tmp_path):
    module = _Distiller()
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    student = load_weights(create_model("resnet8", num_classes=10), path, part="student")
    teacher = load_weights(create_model("wrn_16_1", num_classes=10), path, part="teacher")
    assert torch.equal(_logits(student), _logits(module.student))
    assert torch.equal(_logits(teacher), _logits(module.teacher))
    with pytest.raises(ValueError, match="both 'student.' and 'teacher.' keys"):
        load_state_dict_file(path)


def test_lightning_style_dict_with_student_keys_only(tmp_path):
    student, _ = _trained("resnet8", num_classes=10)
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()}, "epoch": 3}, path)
    assert torch.equal(_logits(load_weights(create_model("resnet8", num_classes=10), path)), _logits(student))


def test_plain_state_dict(tmp_path):
    model, _ = _trained("resnet8")
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    assert torch.equal(_logits(load_weights(create_model("resnet8"), path, part="teacher")), _logits(model))


def test_wrong_architecture_names_missing_unexpected_and_mismatched_keys(tmp_path):
    teacher, optimizer = _trained("resnet8")  # 100 classes; resnet14 has layer*.1 and layer*.2 blocks in addition
    path = _community_file(tmp_path, teacher, optimizer)
    target = create_model("resnet14", num_classes=10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert message.startswith(f"Expected the state_dict in '{path}' to match `model` (CifarResNet), but got 30 missing")
    assert "layer1.1.conv1.weight" in message
    assert "... and 20 more" in message  # 30 missing keys: 10 shown, the rest counted
    assert (
        "2 shape mismatches [fc.weight: checkpoint (100, 64) vs model (10, 64), fc.bias: checkpoint (100,)" in message
    )
    assert "unexpected" not in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing was loaded


def test_unexpected_keys_are_named(tmp_path):
    model, optimizer = _trained("resnet8x4")  # its layer1.0 has a projection shortcut, resnet8's has none
    path = _community_file(tmp_path, model, optimizer)
    expected = "but got 6 unexpected keys [layer1.0.downsample.0.weight, layer1.0.downsample.1.weight, "
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        load_weights(create_model("resnet8"), path)
    assert "missing" not in str(info.value)
    assert "conv1.weight: checkpoint (32, 3, 3, 3) vs model (16, 3, 3, 3)" in str(info.value)


def test_non_strict_ignores_key_sets_but_not_shapes(tmp_path):
    model, optimizer = _trained("resnet8")
    state = model.state_dict()
    state["extra.buffer"] = torch.zeros(1)
    del state["fc.bias"]
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=re.escape("1 missing keys [fc.bias]; 1 unexpected keys [extra.buffer]")):
        load_weights(create_model("resnet8"), path)
    loaded = load_weights(create_model("resnet8"), path, strict=False)
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(create_model("resnet8", num_classes=10), path, strict=False)


def test_missing_num_batches_tracked_is_tolerated(tmp_path):
    model, _ = _trained("resnet8")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert torch.equal(_logits(load_weights(create_model("resnet8"), path)), _logits(model))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{path}' (not found)")):
        load_weights(create_model("resnet32x4"), path)


def test_untrusted_pickle_needs_weights_only_false(tmp_path):
    model, _ = _trained("resnet8")
    path = tmp_path / "with_args.pth"
    torch.save({"model": model.state_dict(), "opt": argparse.Namespace(lr=0.05)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"argparse\.Namespace.*pass `weights_only=False`"):
        load_weights(create_model("resnet8"), path)
    loaded = load_weights(create_model("resnet8"), path, weights_only=False)
    assert torch.equal(_logits(loaded), _logits(model))


class _RunsCode:
    """Unpickling this object would create a file: the kind of payload a crafted checkpoint carries."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty", "the file is empty (0 bytes); torch.load said EOFError."),
        ("truncated", "is truncated ("),
        ("text", "is damaged or not a PyTorch checkpoint (29 bytes)"),
        ("legacy_pickle", "it is a plain pickle file (written by pickle.dump"),
    ],
)
def test_damaged_files_get_a_plain_error_never_the_weights_only_advice(tmp_path, damage, message):
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {"student.fc.weight": torch.ones(2, 3)}}, path)
    whole = path.read_bytes()
    path.write_bytes(
        {
            "empty": b"",
            "truncated": whole[: len(whole) // 2],
            "text": b"epoch: 240, not a checkpoint\n",
            "legacy_pickle": pickle.dumps({"model": [1, 2]}),
        }[damage]
    )
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_state_dict_file(path)
    assert f"Could not read the checkpoint '{path}'" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_a_checkpoint_that_would_run_code_is_refused_without_advice(tmp_path):
    target = tmp_path / "created_by_the_checkpoint"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.ones(1)}, "payload": _RunsCode(target)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"refers to `posix\.system`, which can run code") as info:
        load_state_dict_file(path)
    assert "weights_only=False" not in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (torch.zeros(3), TypeError, "to hold a dict (a state_dict or a checkpoint), but got Tensor."),
        ({"epoch": 3, "acc": 1.0}, ValueError, "or a dict with a 'state_dict' or 'model' state_dict, but got a dict"),
        ({"model": {"fc.weight": torch.zeros(1), "fc.note": "x"}}, TypeError, "to be a tensor, but got [fc.note]"),
    ],
)
def test_unrecognised_contents(tmp_path, content, error, message):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(error, match=re.escape(message)):
        load_state_dict_file(path)


def test_arguments_are_validated(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"fc.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=re.escape("Expected `part` to be one of ('student', 'teacher') or None")):
        load_state_dict_file(path, part="students")
    with pytest.raises(TypeError, match="Expected `model` to be a torch.nn.Module, but got str."):
        load_weights("resnet8", path)


def test_torch_compile_prefix_is_removed(tmp_path):
    model, _ = _trained("resnet8")
    compiled_state = torch.compile(model).state_dict()  # keys `_orig_mod.*`; nothing is compiled until a forward
    assert next(iter(compiled_state)).startswith("_orig_mod.")
    path = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in compiled_state.items()}}, path)
    assert torch.equal(_logits(load_weights(create_model("resnet8"), path, part="student")), _logits(model))
