"""The model zoo's Hugging Face transformers architectures, each as the file a user brings.

MODELS maps a zoo name (prefix `hf_`) to a builder: builder(folder) writes ONE model file into
folder, as a user would export it, and returns its path. The `.pt2` builders export with
torch.export.export(model, args, strict=False) then torch.export.save; the `_onnx` builders
with torch.onnx.export(..., dynamo=False) of a wrapper returning tensors (docs/DESIGN.md §8).

Configs are built in code (the concrete XxxConfig classes: AutoConfig would go to the hub) with
weights from torch.manual_seed(0), and are small (hidden 64, 2 layers, seq 16, image 64) so
that the zoo compiles in minutes, except hf_bert_base (BertConfig(), seq 128) and hf_resnet50
(ResNetConfig() is ResNet-50, 224x224), kept at real size for latency figures; their ONNX
twins compare against onnxruntime, hf_bert_base_onnx with its weights as external data.

Most models are wrapped to return plain tensors (.logits, .last_hidden_state); hf_bert keeps
the raw BaseModelOutput a user's .pt2 carries (kiln imports transformers to load it).
torchvision does not install beside this torch: these vision configs stand in for its
classifiers.

Weights are transformers' own random initialization, except in the deep convolutional nets
of _SHRINKING, whose outputs it shrinks to about 1e-25: there convolutions and batch norms
are initialized as torchvision does, so validating them compares numbers that mean something.

Every architecture of kiln issue 18's list exports with torch.export in this torch
(2.13) and transformers (5.24); only hf_gpt2 has no ONNX twin (see _ONNX).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SEQ = 16
VOCAB = 100
IMAGE = 64

# shared small text-model sizes, in the names each config family uses
_BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=64)
_DECODER = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                use_cache=False)
_VIT_LIKE = dict(image_size=IMAGE, patch_size=8, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=128)


def _returning(model, *fields: str):
    """model wrapped to return fields of its ModelOutput: a plain tensor for one field, a
    tuple of them for several."""
    import torch

    class Fields(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            found = self.model(*args)
            picked = tuple(getattr(found, field) for field in fields)
            return picked[0] if len(picked) == 1 else picked

    return Fields().eval()


def _model(class_name: str, config_name: str, field: str | None, **config):
    """transformers.<class_name>(<config_name>(**config)) in eval mode, seeded; wrapped to
    return `field` unless field is None."""
    import torch
    import transformers
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(getattr(transformers, config_name)(**config))
    if class_name in _SHRINKING:
        _convolutions_keeping_scale(model)
    model.eval()
    return _returning(model, field) if field else model


# deep convolutional nets whose outputs vanish under transformers' initialization
_SHRINKING = ("MobileNetV2ForImageClassification", "EfficientNetForImageClassification",
              "MobileViTForImageClassification")


def _convolutions_keeping_scale(model) -> None:
    """He-normal convolution kernels (gain for ReLU, fan in, as torchvision initializes its
    classifiers) and batch norms at identity (scale 1, shift 0, unit statistics).
    transformers 5 draws both like other weights (std 0.02), and through the dozens of layers
    of MobileNetV2, EfficientNet and MobileViT the outputs shrink to 1e-25 or 1e-30, which any
    compiled module would match: nothing would be validated."""
    import torch
    from torch.nn.utils import parametrize
    for module in model.modules():
        if parametrize.is_parametrized(module):
            continue
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def _ids(seq: int = SEQ, vocab: int = VOCAB):
    import torch
    torch.manual_seed(1)
    return torch.randint(0, vocab, (1, seq))


def _image(size: int = IMAGE, channels: int = 3):
    import torch
    torch.manual_seed(1)
    return torch.randn(1, channels, size, size)


def _pt2(name: str, make: Callable) -> Callable[[Path], Path]:
    """A builder exporting make() -> (module, example args) to <folder>/<name>.pt2."""
    def build(folder: Path) -> Path:
        import torch
        module, args = make()
        path = Path(folder) / f"{name}.pt2"
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False)
        torch.export.save(program, str(path))
        return path
    return build


def _onnx(name: str, make: Callable, external_data: bool = False) -> Callable[[Path], Path]:
    """A builder writing make()'s module to <folder>/<name>.onnx with the legacy (TorchScript)
    exporter, its weights in <name>.onnx.data beside it where external_data."""
    def build(folder: Path) -> Path:
        import torch
        module, args = make()
        path = Path(folder) / f"{name}.onnx"
        names = [f"input{i}" for i in range(len(args))]
        with torch.no_grad():
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names,
                              output_names=["output"], opset_version=17)
        if external_data:
            import onnx
            model = onnx.load(str(path))
            onnx.save_model(model, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{name}.onnx.data")
        return path
    return build


def _text(class_name, config_name, field="logits", seq=SEQ, **config):
    return lambda: (_model(class_name, config_name, field, **config), (_ids(seq),))


def _seq2seq(class_name, config_name, **config):
    """Source ids and decoder ids by keyword (the second positional is the attention mask)."""
    def make():
        import torch
        model = _model(class_name, config_name, None, **config)

        class Logits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, decoder_input_ids):
                return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits

        return Logits().eval(), (_ids(), _ids(8))
    return make


def _vision(class_name, config_name, field="logits", size=IMAGE, **config):
    return lambda: (_model(class_name, config_name, field, **config), (_image(size),))


def _detection(class_name, config_name, **config):
    """An object detector returning its class logits and boxes (both heads are checked)."""
    return lambda: (_returning(_model(class_name, config_name, None, **config), "logits",
                               "pred_boxes"), (_image(),))


def _detr_backbone():
    """DETR's ResNet backbone from transformers itself (no timm, nothing pretrained)."""
    import transformers
    return transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                     depths=[1, 1, 1, 1], layer_type="basic",
                                     out_features=["stage4"])


def _detr():
    return _detection("DetrForObjectDetection", "DetrConfig", use_timm_backbone=False,
                      use_pretrained_backbone=False, backbone_config=_detr_backbone(),
                      d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                      num_queries=10, num_labels=5)()


def _whisper_encoder():
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2,
                                        decoder_layers=2, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=128,
                                        decoder_ffn_dim=128, num_mel_bins=16,
                                        max_source_positions=32, max_target_positions=32,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1)
    encoder = transformers.WhisperModel(config).get_encoder().eval()
    torch.manual_seed(1)   # the encoder wants 2 x max_source_positions frames
    return _returning(encoder, "last_hidden_state"), (torch.randn(1, 16, 64),)


def _wav2vec2():
    import torch
    model = _model("Wav2Vec2ForCTC", "Wav2Vec2Config", "logits", vocab_size=32, hidden_size=64,
                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(1)
    return model, (torch.randn(1, 1600),)


_MAKERS: dict[str, Callable] = {
    # encoders
    "hf_bert": _text("BertModel", "BertConfig", field=None, **_BERT_LIKE),
    "hf_bert_base": _text("BertModel", "BertConfig", field="last_hidden_state", seq=128),
    "hf_roberta": _text("RobertaForSequenceClassification", "RobertaConfig", **_BERT_LIKE),
    "hf_distilbert": _text("DistilBertForSequenceClassification", "DistilBertConfig",
                           vocab_size=VOCAB, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                           max_position_embeddings=64),
    "hf_deberta_v2": _text("DebertaV2ForSequenceClassification", "DebertaV2Config",
                           **_BERT_LIKE),
    "hf_albert": _text("AlbertForSequenceClassification", "AlbertConfig", embedding_size=32,
                       **_BERT_LIKE),
    "hf_electra": _text("ElectraForSequenceClassification", "ElectraConfig", embedding_size=32,
                        **_BERT_LIKE),
    # decoders (no KV cache: the user's export of one forward pass)
    "hf_gpt2": _text("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=64, n_layer=2,
                     n_head=2, n_positions=64, use_cache=False, bos_token_id=0,
                     eos_token_id=0),
    "hf_llama": _text("LlamaForCausalLM", "LlamaConfig", **_DECODER),
    "hf_mistral": _text("MistralForCausalLM", "MistralConfig", **_DECODER),
    "hf_qwen2": _text("Qwen2ForCausalLM", "Qwen2Config", **_DECODER),
    "hf_gemma": _text("GemmaForCausalLM", "GemmaConfig", head_dim=16, **_DECODER),
    "hf_phi": _text("PhiForCausalLM", "PhiConfig", **_DECODER),
    "hf_gpt_neox": _text("GPTNeoXForCausalLM", "GPTNeoXConfig", vocab_size=VOCAB,
                         hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=64, use_cache=False),
    "hf_opt": _text("OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=64,
                    num_hidden_layers=2, ffn_dim=128, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=64, use_cache=False),
    "hf_bloom": _text("BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=64,
                      n_layer=2, n_head=2, use_cache=False),
    # encoder-decoders: source ids and decoder ids
    "hf_t5": _seq2seq("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=64,
                      d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0,
                      use_cache=False),
    "hf_bart": _seq2seq("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB,
                        d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64,
                        use_cache=False),
    # vision
    "hf_vit": _vision("ViTForImageClassification", "ViTConfig", **_VIT_LIKE),
    "hf_deit": _vision("DeiTForImageClassification", "DeiTConfig", **_VIT_LIKE),
    "hf_dinov2": _vision("Dinov2Model", "Dinov2Config", field="pooler_output", **_VIT_LIKE),
    "hf_clip_vision": _vision("CLIPVisionModel", "CLIPVisionConfig", field="pooler_output",
                              **_VIT_LIKE),
    "hf_swin": _vision("SwinForImageClassification", "SwinConfig", image_size=IMAGE,
                       patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4],
                       window_size=4),
    "hf_convnext": _vision("ConvNextForImageClassification", "ConvNextConfig",
                           hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    "hf_resnet50": _vision("ResNetForImageClassification", "ResNetConfig", size=224),
    "hf_regnet": _vision("RegNetForImageClassification", "RegNetConfig", embedding_size=16,
                         hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8),
    "hf_mobilenet_v2": _vision("MobileNetV2ForImageClassification", "MobileNetV2Config",
                               image_size=IMAGE, depth_multiplier=0.35),
    "hf_efficientnet": _vision("EfficientNetForImageClassification", "EfficientNetConfig",
                               image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.25,
                               hidden_dim=320),
    "hf_mobilevit": _vision("MobileViTForImageClassification", "MobileViTConfig",
                            image_size=IMAGE),
    "hf_segformer": _vision("SegformerForSemanticSegmentation", "SegformerConfig",
                            hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                            decoder_hidden_size=64),
    # detection: class logits and boxes
    "hf_detr": _detr,
    "hf_yolos": _detection("YolosForObjectDetection", "YolosConfig",
                           **{**_VIT_LIKE, "image_size": [IMAGE, IMAGE]},
                           num_detection_tokens=10, num_labels=5),
    # audio
    "hf_whisper_encoder": _whisper_encoder,
    "hf_wav2vec2": _wav2vec2,
}

# ONNX twins of some of the above (onnxruntime is their reference and latency baseline).
# Not hf_gpt2: the legacy exporter fails on its attention mask ("Exporting the operator
# 'aten::diff' to ONNX opset version 17 is not supported").
_ONNX = ("hf_bert_base", "hf_resnet50", "hf_roberta", "hf_distilbert", "hf_vit",
         "hf_mobilenet_v2", "hf_t5")
# BERT-base's 440 MB of weights beside the graph, as big models are shipped
_EXTERNAL_DATA = ("hf_bert_base",)


MODELS: dict[str, Callable[[Path], Path]] = {
    **{name: _pt2(name, make) for name, make in _MAKERS.items()},
    **{f"{name}_onnx": _onnx(f"{name}_onnx", _MAKERS[name], name in _EXTERNAL_DATA)
       for name in _ONNX},
}
