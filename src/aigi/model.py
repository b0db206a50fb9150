"""The CLIP detector: an open_clip model plus an N-way head, built by name, saved without pickles.

Classes are REAL (index 0) then one per generator (aigi.classes). Every method (zero-shot,
contrastive, linear probe, full) ends in the same shape: image features (L2-normalised) times a
class weight matrix. For zero-shot and contrastive that matrix is the
prompt-ensemble text embedding of each class scaled by CLIP's logit scale; the probe and full
methods train it directly. So evaluation, prediction and serving have a single code path.

Saved layout (`save_detector`): `clip/` in open_clip's own `local-dir:` format
(`open_clip_config.json` + `open_clip_model.safetensors`), `head.safetensors` and `detector.json`.
Nothing is pickled; loading never runs code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from aigi.classes import REAL, manifest_prompts
from aigi.errors import AigiError, one_line

TINY = "aigi-tiny"  # the project's tiny architecture: tests and the offline demo, CPU, seconds
open_clip.add_model_config(Path(__file__).parent / "model_configs")


def resolve_arch(arch: str) -> str:
    """An open_clip model name for `model.arch` (a built-in name, `aigi-tiny`, or a config JSON path)."""
    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise AigiError(f"model.arch '{arch}': no such model-config JSON file")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(arch) is None:
        raise AigiError(
            f"model.arch '{arch}' is not a known open_clip model; use a name from open_clip.list_models() "
            f"(e.g. ViT-B-32), {TINY}, or a path to an open_clip model-config JSON"
        )
    return arch


def input_size(arch: str) -> int:
    """The square input resolution of `arch`, read from its config (no weights loaded)."""
    size = open_clip.get_model_config(resolve_arch(arch))["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


class SdpaAttention(nn.MultiheadAttention):
    """open_clip's self-attention (nn.MultiheadAttention, same parameters and state-dict keys) through
    `F.scaled_dot_product_attention`, so the fused kernels (flash / memory-efficient on CUDA, the fused
    CPU kernel on CPU) run in training, inference and under torch.compile alike.

    nn.MultiheadAttention reaches SDPA only through its Python fallback, and in eval mode without
    gradients it takes its own "fast path" (`torch._native_multi_head_attention`) instead; this class
    always takes one path. A 2-D mask equal to the causal one (the text tower's) becomes `is_causal`,
    which lets CUDA use the flash kernel; any other mask is passed as it is.
    """

    causal_length: int = 0  # set by `use_sdpa` when the tower's mask is the causal mask of this length

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (key is not query or value is not query or need_weights or key_padding_mask is not None
                or not self.batch_first or not self._qkv_same_embed_dim or self.in_proj_bias is None
                or self.bias_k is not None or self.add_zero_attn):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        n, length, width = query.shape
        q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(
            n, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dim() == 2 and attn_mask.shape[0] == self.causal_length == length:
            attn_mask, is_causal = None, True
        elif attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width)), None


def use_sdpa(clip: nn.Module) -> int:
    """Route every self-attention of `clip` through `SdpaAttention` (in place; weights untouched);
    returns how many modules now do."""
    mask = getattr(clip, "attn_mask", None)
    causal = 0
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        expected = torch.full_like(mask, float("-inf")).triu_(1)
        causal = mask.shape[0] if torch.equal(mask, expected) else 0
    count = 0
    for module in clip.modules():
        if type(module) is nn.MultiheadAttention and module.batch_first and module._qkv_same_embed_dim:
            module.__class__ = SdpaAttention
            count += 1
        if isinstance(module, SdpaAttention):
            module.causal_length = causal
    return count


class PixelPatchEmbed(nn.Conv2d):
    """A ViT's patch embedding (conv1) that takes 0..255 pixels: CLIP's normalisation is folded into
    the weights and bias at each call, conv((x/255 - mean)/std, W) = conv(x, W/(255·std)) - sum(W·mean/std),
    so the uint8 batch goes straight from the device to the first matrix product. Exact for a conv
    without padding (a ViT's; every patch sees the whole kernel). The stored weight is the plain
    one, so training, saving and loading are unchanged."""

    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel, set by fuse_normalisation

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # The statistics stay fp32 on the weight's device whatever the weights are cast to (bf16 copies).
        mean, std = self.pixel_stats
        self.pixel_mean = torch.tensor(mean, dtype=torch.float32, device=self.weight.device)
        self.pixel_std = torch.tensor(std, dtype=torch.float32, device=self.weight.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        inv = (1.0 / (255.0 * self.pixel_std)).view(1, -1, 1, 1)
        shift = (self.pixel_mean / self.pixel_std).view(1, -1, 1, 1)
        bias = -(w.float() * shift).sum(dim=(1, 2, 3))
        if self.bias is not None:
            bias = bias + self.bias.float()
        return F.conv2d(x.to(w.dtype), (w.float() * inv).to(w.dtype), bias.to(w.dtype), self.stride, self.padding,
                        self.dilation, self.groups)


def fuse_normalisation(visual: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> bool:
    """Fold the normalisation into `visual.conv1` when it is a ViT patch embedding; False if it is not
    (a ResNet stem pads its input, where a folded bias would be wrong at the border)."""
    conv = getattr(visual, "conv1", None)
    if type(conv) is not nn.Conv2d or conv.padding != (0, 0) or conv.groups != 1 or conv.in_channels != 3 \
            or not hasattr(visual, "positional_embedding"):
        return False
    conv.__class__ = PixelPatchEmbed
    conv.pixel_stats = (tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))
    conv.register_buffer("pixel_mean", mean.flatten().float().to(conv.weight.device), persistent=False)
    conv.register_buffer("pixel_std", std.flatten().float().to(conv.weight.device), persistent=False)
    return True


def model_config(name: str, pretrained: str | None) -> dict[str, Any]:
    """The open_clip config the model is built with: the architecture's, plus QuickGELU when the
    pretrained tag was trained with it (OpenAI's weights are; `ViT-B-32` alone does not say so, and
    GELU on QuickGELU weights silently degrades the model). Saved with the model, so reloads match."""
    cfg = dict(open_clip.get_model_config(name))
    tag = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if tag and tag.get("quick_gelu"):
        cfg["quick_gelu"] = True
    return cfg


class Detector(nn.Module):
    """CLIP image tower + class head. Input: N×S×S×3 uint8 pixels (any device); output: logits N×len(classes).

    Its CLIP's attention runs through fused SDPA (`use_sdpa`), and for a ViT the pixel normalisation is
    folded into the patch embedding (`fuse_normalisation`): `clip.encode_image` then takes 0..255
    pixels, which `normalise` supplies.
    """

    def __init__(self, clip: nn.Module, model_cfg: dict[str, Any], classes: list[str], tokenizer: Any = None):
        super().__init__()
        if len(classes) < 2 or classes[0] != REAL:
            raise AigiError(f"a detector's classes must be {REAL} then at least one generator; got {classes}")
        self.classes = list(classes)
        self.clip = clip
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        self._tokens: dict[tuple, torch.Tensor] = {}
        pp = open_clip.get_model_preprocess_cfg(clip)
        self.image_size = int(pp["size"] if isinstance(pp["size"], int) else pp["size"][0])
        self.register_buffer("mean", torch.tensor(pp["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp["std"]).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Linear(model_cfg["embed_dim"], len(self.classes))
        use_sdpa(clip)
        self.fused_normalisation = fuse_normalisation(clip.visual, self.mean, self.std)
        self._inference: dict[tuple, nn.Module] = {}
        # As saved with the model (detector.json): how an image reaches the input (the keyword arguments of
        # aigi.data.images.model_input) and the decision threshold chosen in finetune (None: evaluate.threshold).
        self.input_transform: dict[str, Any] = {"resize": "shorter_side", "jpeg_quality": None}
        self.threshold: float | None = None

    def normalise(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 NHWC -> the float NCHW the image tower takes, on the model's device (the only place this
        happens): 0..255 values when the normalisation is folded into the patch embedding, else (x/255 - mean)/std."""
        if pixels.shape[1:3] != (self.image_size, self.image_size):
            raise AigiError(
                f"images are {tuple(pixels.shape[1:3])} but the model expects {self.image_size}x{self.image_size}; "
                f"re-run preprocess for this model.arch"
            )
        x = pixels.to(self.mean.device, non_blocking=True).permute(0, 3, 1, 2)
        if self.fused_normalisation:
            return x.to(dtype)  # integers 0..255: exact in bf16 too
        return ((x.float().div_(255) - self.mean) / self.std).to(dtype)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(self.normalise(pixels), normalize=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(pixels))

    def logits(self, features: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits in fp32, also under bf16 autocast: logits near 100·cos would be quantised to
        steps of 0.125 in bf16, and P(fake) would then take only a few distinct values.

        `classes` (C×D, e.g. live class text embeddings while training contrastive) scores against
        those instead of the head: logit_scale · cos.
        """
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            if classes is None:
                return self.head(features)
            return self.logit_scale().float() * features @ classes.float().T

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def class_embeddings(self, prompts: dict[str, list[str]]) -> torch.Tensor:
        """Prompt-ensemble text embedding per class (mean of normalised prompts, renormalised): C×D.

        Gradients flow when enabled, so the contrastive method trains the text tower through this.
        """
        if self.tokenizer is None:
            raise RuntimeError("this detector was loaded without a tokenizer")
        device = self.mean.device
        rows = []
        for name in self.classes:
            key = (device, *prompts[name])
            if key not in self._tokens:  # tokenise once, not every training step
                self._tokens[key] = self.tokenizer(prompts[name]).to(device)
            tokens = self._tokens[key]
            emb = self.clip.encode_text(tokens, normalize=True).float().mean(dim=0)
            rows.append(emb / emb.norm())
        return torch.stack(rows)

    def inference_model(self, dtype: torch.dtype = torch.float32, compile: bool = False) -> nn.Module:
        """pixels -> fp32 logits for scoring: the image tower in `dtype` (bf16 weights on CUDA, not
        autocast around fp32 ones), optionally torch.compile'd. A bf16 model is a copy of the image
        tower, made once and rebuilt only when a weight changed in place (training, loading, WiSE-FT);
        fp32 uses this detector's own weights."""
        key = (dtype, compile)
        version = tuple((p._version, p.data_ptr()) for p in self.parameters())
        cached = self._inference.get(key)
        if cached is None or cached.version != version:
            self._inference.pop(key, None)
            model: nn.Module = InferenceModel(self, dtype)
            model.version = version
            if compile:
                model = torch.compile(model, dynamic=False)
                model.version = version
            self._inference[key] = cached = model
        return cached

    @torch.no_grad()
    def set_head_from_prompts(self, prompts: dict[str, list[str]]) -> None:
        """Zero-shot head: logit_scale × class text embeddings, no bias."""
        self.head.weight.copy_(self.logit_scale() * self.class_embeddings(prompts))
        self.head.bias.zero_()


class InferenceModel(nn.Module):
    """What `Detector.inference_model` returns: uint8 pixels -> fp32 logits, image tower in `dtype`.

    Features are L2-normalised and scored by the detector's head in fp32 (see `Detector.logits`), so
    bf16 moves only the tower's arithmetic; P(fake) keeps its resolution.
    """

    def __init__(self, detector: Detector, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.owner = [detector]  # not a submodule: a bf16 copy must not hold the fp32 detector's weights twice
        visual = detector.clip.visual
        self.visual = visual if dtype == torch.float32 else copy.deepcopy(visual).to(dtype).eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        detector = self.owner[0]
        features = self.visual(detector.normalise(pixels, self.dtype))
        return detector.logits(F.normalize(features.float(), dim=-1))


def create_detector(
    arch: str, pretrained: str, prompts: dict[str, list[str]], device: torch.device, seed: int = 0
) -> Detector:
    """A fresh detector: open_clip `arch` with `pretrained` weights and the zero-shot head for `prompts`,
    whose keys are the classes in order (`aigi.classes.class_prompts`).

    Random initialisation (`pretrained: none`) is seeded, so zeroshot and finetune start from the same model.
    """
    name = resolve_arch(arch)
    torch.manual_seed(seed)
    weights = None if pretrained.lower() == "none" else pretrained
    model_cfg = model_config(name, weights)
    try:
        clip = open_clip.create_model(
            name, pretrained=weights, device=device, force_quick_gelu=model_cfg.get("quick_gelu", False)
        )
    except Exception as e:  # open_clip raises RuntimeError for both unknown tags and failed downloads
        if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "CUDA" in str(e):
            raise  # the device failed, not the weights
        msg = one_line(e, 240)
        raise AigiError(
            f"model.pretrained '{pretrained}' for {name}: could not load weights ({msg}); use an open_clip tag "
            f"(open_clip.list_pretrained()), a local checkpoint path (works offline), or `none` for random init"
        ) from None
    detector = Detector(clip, model_cfg, list(prompts), open_clip.get_tokenizer(name)).to(device)
    detector.set_head_from_prompts(prompts)
    return detector


def zeroshot_detector(manifest: dict[str, Any], model: Any, zeroshot: Any, device: torch.device, seed: int
                      ) -> tuple[Detector, dict[str, list[str]]]:
    """The pretrained CLIP with one prompt ensemble per class of a processed dataset's `manifest`, from the
    `model` and `zeroshot` params sections: the zero-shot detector, and where fine-tuning starts. Also
    returns the prompts (keys: the classes, REAL first)."""
    prompts = manifest_prompts(manifest, zeroshot)
    return create_detector(model.arch, model.pretrained, prompts, device, seed=seed), prompts


def save_detector(detector: Detector, folder: Path, meta: dict[str, Any]) -> None:
    """Write the detector into `folder` (which must not hold an older model's files)."""
    clip_dir = folder / "clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    pp = open_clip.get_model_preprocess_cfg(detector.clip)
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": detector.model_cfg, "preprocess_cfg": dict(pp)}, indent=2, default=list)
    )
    state = {k: v.detach().contiguous().cpu() for k, v in detector.clip.state_dict().items()}
    save_file(state, clip_dir / "open_clip_model.safetensors")
    save_file({k: v.detach().contiguous().cpu() for k, v in detector.head.state_dict().items()},
              folder / "head.safetensors")
    (folder / "detector.json").write_text(
        json.dumps({"classes": detector.classes, "image_size": detector.image_size, **meta}, indent=2) + "\n"
    )


def load_detector(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Detector, dict[str, Any]]:
    """Load what `save_detector` wrote; returns the detector (eval mode) and `detector.json`."""
    folder = Path(folder)
    if not (folder / "detector.json").is_file() or not (folder / "clip" / "open_clip_config.json").is_file():
        raise AigiError(f"{folder}: not a saved aigi model (detector.json, clip/ missing); run the finetune stage")
    meta = json.loads((folder / "detector.json").read_text())
    model_cfg = json.loads((folder / "clip" / "open_clip_config.json").read_text())["model_cfg"]
    ident = f"local-dir:{(folder / 'clip').resolve()}"
    clip = open_clip.create_model(ident, device=device)  # safetensors: no code runs on load
    detector = Detector(clip, model_cfg, meta["classes"], open_clip.get_tokenizer(ident)).to(device)
    detector.head.load_state_dict(load_file(folder / "head.safetensors", device=str(device)))
    if meta.get("temperature"):  # temperature scaling fitted in finetune (aigi.calibration): logits / T
        with torch.no_grad():
            detector.head.weight.div_(meta["temperature"])
            detector.head.bias.div_(meta["temperature"])
    detector.input_transform = {"resize": meta.get("resize", "shorter_side"), "jpeg_quality": meta.get("jpeg_align")}
    detector.threshold = meta.get("threshold")
    return detector.eval(), meta
