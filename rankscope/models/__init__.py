from rankscope.models.llama import LlamaLM, ModelConfig, lm_loss, lm_loss_sums
from rankscope.models.presets import PRESETS, model_config

__all__ = ["LlamaLM", "ModelConfig", "PRESETS", "lm_loss", "lm_loss_sums", "model_config"]
