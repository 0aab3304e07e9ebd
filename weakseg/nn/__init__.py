"""Shared neural-network building blocks (timm backbone + FPN, U-Net, focal loss, Instances)."""
