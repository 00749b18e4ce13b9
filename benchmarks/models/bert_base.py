"""A BERT-base-size encoder (about 110M parameters) built in code with seeded random weights:
the real-size model of benchmarks/bench_params.py. Not in models/: it takes minutes to build
and compile, so it is no example and no test.

Written out (not torch.nn.TransformerEncoder) so that torch.export traces plain ops, not the
fused fast path that only eager PyTorch has."""
FRAMEWORK = "torch"

VOCAB, HIDDEN, LAYERS, HEADS, FFN, SEQ = 30522, 768, 12, 12, 3072, 128


def build():
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
            self.out = nn.Linear(HIDDEN, HIDDEN)
            self.norm1 = nn.LayerNorm(HIDDEN)
            self.ffn_in = nn.Linear(HIDDEN, FFN)
            self.ffn_out = nn.Linear(FFN, HIDDEN)
            self.norm2 = nn.LayerNorm(HIDDEN)

        def forward(self, x):
            batch, seq, _ = x.shape
            q, k, v = self.qkv(x).view(batch, seq, 3, HEADS, HIDDEN // HEADS).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            scores = (q @ k.transpose(-1, -2)) * (HIDDEN // HEADS) ** -0.5
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, HIDDEN)
            x = self.norm1(x + self.out(context))
            return self.norm2(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(VOCAB, HIDDEN)
            self.positions = nn.Embedding(SEQ, HIDDEN)
            self.norm = nn.LayerNorm(HIDDEN)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

        def forward(self, token_ids):
            positions = torch.arange(token_ids.shape[1]).unsqueeze(0)
            x = self.norm(self.words(token_ids) + self.positions(positions))
            for layer in self.layers:
                x = layer(x)
            return x

    token_ids = torch.randint(0, 1000, (1, SEQ))
    return Encoder(), (token_ids,)
