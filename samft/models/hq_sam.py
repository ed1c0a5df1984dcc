"""HQ-SAM (Ke et al., "Segment Anything in High Quality", SysCV/sam-hq) on a frozen SAM.

HQ-SAM adds to SAM's mask decoder one more output token (the HQ token, ``hf_token``, with its own
hypernetwork MLP ``hf_mlp``) and a global-local feature fusion: the ViT's feature after its first
global-attention block (``compress_vit_feat``) plus the final image embedding (``embedding_encoder``),
both upsampled to the mask resolution, plus the decoder's own upscaled embedding
(``embedding_maskfeature``). Only these additions train; SAM's weights stay frozen. Written for samft
after sam-hq's ``mask_decoder_hq.py`` and ``build_sam.py``: the parameter names and shapes are those
of the released ``sam_hq_vit_*.pth`` (SAM's keys plus ``mask_decoder.hf_token.*``, ...).

How the engine calls it: the image encoder returns SAM's embedding and the early ViT feature in
one tensor, ``[B, 256 + vit_dim, S/16, S/16]`` (so the embedding cache, the data path and every
caller that carries "the image embedding" work unchanged); the decoder splits it again.
``predict_masks`` keeps segment_anything's signature and returns four outputs like SAM's: output
``k`` is the HQ token's mask (``hq_token_only=True``, what HQ-SAM trains and samft's default) or
SAM's mask ``k`` plus the HQ mask (``hq_token_only=False``, HQ-SAM's default at inference; for a
multimask prompt HQ-SAM returns the best-scored of these). IoU predictions are SAM's head's.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

#: The parameters HQ-SAM adds and trains (``fnmatch`` patterns over the model's parameter names).
HQ_PARAMETERS = ("mask_decoder.hf_token.*", "mask_decoder.hf_mlp.*", "mask_decoder.compress_vit_feat.*",
                 "mask_decoder.embedding_encoder.*", "mask_decoder.embedding_maskfeature.*")


class HQImageEncoderViT(ImageEncoderViT):
    """segment_anything's ViT (same parameters) that also returns the feature after its first global block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> ``[B, out_chans + embed_dim, S/16, S/16]``: SAM's embedding, then the early feature."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        early = None
        for block in self.blocks:
            x = block(x)
            if early is None and block.window_size == 0:  # the first global-attention block
                early = x
        return torch.cat([self.neck(x.permute(0, 3, 1, 2)), early.permute(0, 3, 1, 2)], dim=1)


class MaskDecoderHQ(MaskDecoder):
    """SAM's mask decoder (same parameters) plus HQ-SAM's output token and feature fusion.

    Args:
        vit_dim: Channels of the image encoder's ViT (768 / 1024 / 1280 for ViT-B / L / H).
        kwargs: :class:`segment_anything.modeling.MaskDecoder`'s arguments.
    """

    def __init__(self, *, vit_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        dim = self.transformer_dim
        self.hq_token_only = True
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, dim, kernel_size=2, stride=2), LayerNorm2d(dim), nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2))
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2))
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1), LayerNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1))

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                      image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's ``predict_masks`` with the HQ token (see the module docstring for the outputs).

        Args:
            image_embeddings: ``[B, 256 + vit_dim, h, w]`` from :class:`HQImageEncoderViT`.
            image_pe: ``[1, 256, h, w]``; sparse/dense prompt embeddings: ``[N, T, 256]`` / ``[N, 256, h, w]``.
            image_index: ``[N]``, the image of each prompt (samft's batched path); None: one image (B = 1)
                for all prompts, as segment_anything's callers pass it.

        Returns:
            masks ``[N, 4, 4h, 4w]`` and SAM's IoU predictions ``[N, 4]``.
        """
        n = sparse_prompt_embeddings.shape[0]
        embedding, early = image_embeddings.split([self.transformer_dim, image_embeddings.shape[1]
                                                   - self.transformer_dim], dim=1)
        # The fused features are per image: computed once, then gathered for the image's prompts.
        hq_features = self.embedding_encoder(embedding) + self.compress_vit_feat(early)
        if image_index is None:
            image_index = torch.zeros(n, dtype=torch.long, device=embedding.device)
        embedding, hq_features = embedding[image_index], hq_features[image_index]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings], dim=1)
        src = embedding + dense_prompt_embeddings
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
        sam_tokens = hs[:, 1:1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        upscaled_hq = self.embedding_maskfeature(upscaled) + hq_features
        hyper = torch.stack([mlp(sam_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        sam_masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        hq_mask = (self.hf_mlp(hs[:, 1 + self.num_mask_tokens]).unsqueeze(1) @ upscaled_hq.reshape(b, c, h * w))
        hq_mask = hq_mask.reshape(b, 1, h, w)
        masks = hq_mask.expand_as(sam_masks) if self.hq_token_only else sam_masks + hq_mask
        return masks, self.iou_prediction_head(hs[:, 0])

    def predict_per_prompt(self, image_embeddings: torch.Tensor, image_index: torch.Tensor, image_pe: torch.Tensor,
                           sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """samft's batched path (:func:`samft.models.forward.decode_masks`): prompts of several images."""
        return self.predict_masks(image_embeddings, image_pe, sparse, dense, image_index=image_index)
