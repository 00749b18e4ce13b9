"""A small PyTorch MLP: the fast model the tests compile."""
FRAMEWORK = "torch"


def build():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    return model, (torch.randn(2, 16),)
