"""Tiny, seeded Hugging Face `transformers` models for export tests: built from configs, never
downloaded. Each factory is a SOURCE for `ferry export` (`tests.support.hf_models:bert`)."""

from __future__ import annotations

import os

import numpy as np
import torch

from exporters.inputs import padding_mask

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WhisperConfig,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

VOCAB = 99


def token_batch(
    rows: int, length: int, rng: np.random.Generator, token_types: bool = False
) -> dict[str, np.ndarray]:
    """input_ids below VOCAB and an end-padded attention_mask (and token_type_ids 0/1)."""
    batch = {
        "input_ids": rng.integers(0, VOCAB, (rows, length)).astype(np.int64),
        "attention_mask": padding_mask((rows, length), rng),
    }
    if token_types:
        batch["token_type_ids"] = rng.integers(0, 2, (rows, length)).astype(np.int64)
    return batch


def _seeded(build: type[PreTrainedModel], config: object, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return build(config).eval()  # type: ignore[call-arg]


def bert(hidden: int = 32, layers: int = 2, heads: int = 4) -> PreTrainedModel:
    """BertForSequenceClassification: input_ids, attention_mask, token_type_ids -> logits (3)."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=128,
        type_vocab_size=2,
        num_labels=3,
    )
    return _seeded(BertForSequenceClassification, config, 10)


def distilbert() -> PreTrainedModel:
    """DistilBertModel: input_ids, attention_mask -> last_hidden_state."""
    config = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128
    )
    return _seeded(DistilBertModel, config, 11)


def gpt2() -> PreTrainedModel:
    """GPT2LMHeadModel with its default use_cache=True: logits beside a cache."""
    config = GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4)
    return _seeded(GPT2LMHeadModel, config, 12)


def vit() -> PreTrainedModel:
    """ViTForImageClassification, 32x32 images in 8x8 patches (other sizes: interpolate)."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return _seeded(ViTForImageClassification, config, 13)


def wav2vec2() -> PreTrainedModel:
    """Wav2Vec2Model on raw audio (input_values) -> last_hidden_state."""
    config = Wav2Vec2Config(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    return _seeded(Wav2Vec2Model, config, 14)


WHISPER_FRAMES = 2 * 32  # WhisperEncoder takes exactly 2 * max_source_positions mel frames


def whisper_encoder() -> PreTrainedModel:
    """WhisperEncoder: input_features (80 mel bins x WHISPER_FRAMES) -> last_hidden_state."""
    config = WhisperConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=WHISPER_FRAMES // 2,
        max_target_positions=32,
    )
    return _seeded(WhisperEncoder, config, 15)


def t5_encoder() -> PreTrainedModel:
    """T5EncoderModel: input_ids, attention_mask -> last_hidden_state."""
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return _seeded(T5EncoderModel, config, 16)


def resnet() -> PreTrainedModel:
    """ResNetForImageClassification (basic blocks, 4 stages) -> logits (4)."""
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        num_labels=4,
    )
    return _seeded(ResNetForImageClassification, config, 17)
