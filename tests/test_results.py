"""The one row schema (qsim.results.schema): every producer's rows carry the
quantizer's and the shifted set's own fields, so reports read fields."""

import pytest

from qsim.evaluate import report
from qsim.quant import preset
from qsim.results import QuantInfo, Row, RunInfo, SetInfo, with_quant_fields
from qsim.shifts import registry

RUN = RunInfo(checkpoint="/ck", model="lenet5", method="standard", dataset="fashion_mnist", train_seed=0)


@pytest.mark.parametrize(
    "name, fields",
    [
        ("w4a4", ("int", 4, "int", 4)),
        ("w2", ("int", 2, "float", None)),
        ("tflite_int8", ("int", 8, "int", 8)),
        ("fp16", ("fp16", 16, "float", None)),
        ("float32", ("float", None, "float", None)),
    ],
)
def test_quantizer_fields_come_from_the_config(name, fields):
  q = QuantInfo.of(preset(name), 3)
  assert (q.quantizer, q.index) == (name, 3)
  assert (q.weight_format, q.weight_bits, q.act_format, q.act_bits) == fields


def test_a_row_is_flat_ordered_and_names_each_field_once():
  shifted = registry.parse("fashion_mnist/c/fog/3")
  row = Row(
      run=RUN,
      set=SetInfo.of(shifted, 7),
      quantizer=QuantInfo.of_preset("w4a8", 1),
      keys={"strategy": "margin"},
      metrics={"disagreements": 5},
      settings={"limit": None},
  ).as_dict()
  assert list(row)[:16] == [
      "checkpoint", "model", "method", "train_seed", "dataset",
      "set", "set_index", "family", "shift", "severity",
      "quantizer", "quantizer_index", "weight_format", "weight_bits", "act_format", "act_bits",
  ]  # fmt: skip
  assert (row["family"], row["shift"], row["severity"], row["set_index"]) == ("c", "fog", 3, "00007")
  assert (row["quantizer_index"], row["weight_bits"], row["act_bits"]) == ("001", 4, 8)
  assert row["strategy"] == "margin" and row["disagreements"] == 5 and row["backend"] == "cpu"
  clean = Row(run=RUN, set=SetInfo.of(registry.clean_set("fashion_mnist"), 0)).as_dict()
  assert (clean["set"], clean["family"], clean["shift"], clean["severity"]) == ("clean", "clean", "", None)
  with pytest.raises(ValueError, match=r"\['model'\] are given twice"):
    Row(run=RUN, metrics={"model": "x"}).as_dict()


def test_old_rows_get_their_quantizer_fields_and_reports_read_fields():
  old = {"quantizer": "w4a4", "set": "clean"}
  assert with_quant_fields(old) == {**old, "weight_format": "int", "weight_bits": 4, "act_format": "int", "act_bits": 4}
  new = {"quantizer": "custom", "weight_format": "int", "weight_bits": 4, "act_format": "int", "act_bits": 4}
  assert with_quant_fields(new) is new
  # the bit-grid plot takes the wXaY grid points by their fields, not a preset with the same bits
  rows = [with_quant_fields({"quantizer": q}) for q in ("w8a8", "tflite_int8", "w4")]
  assert [report._bits(r) for r in rows] == [(8, 8), None, (4, None)]  # pylint: disable=protected-access


def test_set_labels_come_from_the_fields():
  from qsim.results import set_label

  rows = [
      Row(run=RUN, set=SetInfo.of(registry.parse("fashion_mnist/c/fog/3"))).as_dict(),
      Row(run=RUN, set=SetInfo.of(registry.clean_set("fashion_mnist"))).as_dict(),
      {"family": "official_c", "shift": "fog", "severity": float("nan")},  # read back from a CSV
      {"family": "c", "shift": "rotate", "severity": 5.0},
  ]
  assert [set_label(r) for r in rows] == ["c/fog/3", "clean", "official_c/fog", "c/rotate/5"]
