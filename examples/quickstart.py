"""Quick start: build a tiny FLAVA, encode images and text, fuse them, train a few contrastive steps.

    python examples/quickstart.py

Runs in seconds on a CPU. The pretraining demo on the built-in dataset replaces this
as the README's main job once the pretraining recipe lands.
"""

import torch
import torch.nn.functional as F

from mmkit.models import FLAVAConfig, flava_model


def main() -> None:
    torch.manual_seed(0)
    model = flava_model(FLAVAConfig.tiny())
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny FLAVA: {n_params / 1e6:.2f}M parameters, attention backend "
        f"{model.image_encoder.encoder.layers[0].attn.backend!r}"
    )

    images = torch.randn(8, 3, 32, 32)  # (B, C, H, W)
    input_ids = torch.randint(1000, 2000, (8, 12))  # (B, L)
    attention_mask = torch.ones(8, 12, dtype=torch.long)
    attention_mask[4:, 9:] = 0  # the last four captions are padded to length 12

    out = model(pixel_values=images, input_ids=input_ids, attention_mask=attention_mask)
    print("image tokens     ", tuple(out.image.last_hidden_state.shape), "= (B, 1 + patches, D)")
    print("text tokens      ", tuple(out.text.last_hidden_state.shape), "= (B, L, D)")
    print("fused tokens     ", tuple(out.multimodal.last_hidden_state.shape), "= (B, 1 + 1 + patches + L, D)")
    print("embeddings       ", tuple(out.image_embedding.shape), "(L2-normalised)")

    # A few steps of FLAVA's global contrastive objective on this one batch.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.arange(8)
    for step in range(30):
        out = model(pixel_values=images, input_ids=input_ids, attention_mask=attention_mask, skip_multimodal=True)
        logits = out.image_embedding @ out.text_embedding.T * model.logit_scale.exp()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale()
        if step % 10 == 0 or step == 29:
            acc = (logits.argmax(1) == labels).float().mean().item()
            print(f"step {step:2d}  contrastive loss {loss.item():.3f}  image->text accuracy {acc:.2f}")


if __name__ == "__main__":
    main()
