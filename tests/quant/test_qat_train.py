"""``TrainConfig.qat``: the Trainer trains through fake quantisation and exports the quantised model."""
import pytest

from llmkit import CausalLM
from llmkit.quant import FakeQuantLinear, Int4Linear
from llmkit.train import Trainer
from llmkit.train.data import Data
from tests.train.helpers import RandomBatches, tiny_cfg


def test_trainer_with_qat_exports_the_quantized_model(tmp_path):
    cfg = tiny_cfg(tmp_path, qat="int4", max_steps=3, model_overrides={"dim": 64})
    trainer = Trainer(cfg, data=Data(RandomBatches()))
    assert isinstance(trainer.model.model.layers[0].mlp.up_proj, FakeQuantLinear)
    trainer.fit()
    exported = CausalLM.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(exported.model.layers[0].mlp.up_proj, Int4Linear)
    assert exported.quantization_config == {"quant_method": "int4", "group_size": 64,
                                            "skip": ["lm_head", "embed_tokens"]}


def test_qat_must_name_a_qat_scheme(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.qat='gptq'"):
        tiny_cfg(tmp_path, qat="gptq").validate()


def test_finetune_passes_qat_to_the_trainer_for_full_training_only(tmp_path):
    from llmkit.finetune.config import FinetuneConfig
    from llmkit.finetune.run import train_config

    cfg = FinetuneConfig(method="full", qat="int8", out_dir=str(tmp_path)).validate()
    assert train_config(cfg, tmp_path / "train.jsonl", None, tmp_path).qat == "int8"
    with pytest.raises(ValueError, match="use method=full"):
        FinetuneConfig(method="lora", qat="int4").validate()


def test_qat_group_size_sets_the_int4_groups(tmp_path):
    cfg = tiny_cfg(tmp_path, qat="int4", qat_group_size=32, max_steps=1, model_overrides={"dim": 64})
    trainer = Trainer(cfg, data=Data(RandomBatches()))
    assert trainer.model.model.layers[0].mlp.down_proj.group_size == 32
    with pytest.raises(ValueError, match="TrainConfig.qat_group_size=48"):
        tiny_cfg(tmp_path, qat="int4", qat_group_size=48).validate()
