"""Look-alike of Time-Series-Library's run.py: the argparse block the recipe extends, and a one-file trainer
(a CSV of the upstream layout: a ``date`` column, then one column per variate; the first 70% of the rows train)."""
import argparse
import csv
import os
import random

import numpy as np
import torch

from exp.exp_basic import Exp_Basic

if __name__ == '__main__':
    random.seed(2021)
    torch.manual_seed(2021)
    np.random.seed(2021)

    parser = argparse.ArgumentParser(description='TimesNet')
    parser.add_argument('--task_name', type=str, required=True, default='long_term_forecast')
    parser.add_argument('--is_training', type=int, required=True, default=1, help='status')
    parser.add_argument('--model_id', type=str, default='test', help='model id')
    parser.add_argument('--model', type=str, required=True, default='Autoformer')
    parser.add_argument('--data', type=str, default='custom', help='dataset type')
    parser.add_argument('--root_path', type=str, default='./data/ETT/', help='root path of the data file')
    parser.add_argument('--data_path', type=str, default='ETTh1.csv', help='data file')
    parser.add_argument('--features', type=str, default='M')
    parser.add_argument('--seq_len', type=int, default=96, help='input sequence length')
    parser.add_argument('--label_len', type=int, default=48, help='start token length')
    parser.add_argument('--pred_len', type=int, default=96, help='prediction sequence length')
    parser.add_argument('--enc_in', type=int, default=7, help='encoder input size')
    parser.add_argument('--dec_in', type=int, default=7, help='decoder input size')
    parser.add_argument('--c_out', type=int, default=7, help='output size')
    parser.add_argument('--d_model', type=int, default=512, help='dimension of model')
    parser.add_argument('--n_heads', type=int, default=8, help='num of heads')
    parser.add_argument('--e_layers', type=int, default=2, help='num of encoder layers')
    parser.add_argument('--d_layers', type=int, default=1, help='num of decoder layers')
    parser.add_argument('--d_ff', type=int, default=2048, help='dimension of fcn')
    parser.add_argument('--factor', type=int, default=1, help='attn factor')
    parser.add_argument('--dropout', type=float, default=0.1, help='dropout')
    parser.add_argument('--activation', type=str, default='gelu', help='activation')
    parser.add_argument('--train_epochs', type=int, default=10, help='train epochs')
    parser.add_argument('--batch_size', type=int, default=32, help='batch size of train input data')
    parser.add_argument('--learning_rate', type=float, default=0.0001, help='optimizer learning rate')
    parser.add_argument('--patch_len', type=int, default=16, help='patch length')
    args = parser.parse_args()
    print('Args in experiment:', vars(args))

    with open(os.path.join(args.root_path, args.data_path), newline='') as f:
        rows = list(csv.reader(f))
    values = torch.tensor([[float(v) for v in row[1:]] for row in rows[1:]], dtype=torch.float32)
    train = values[: int(len(values) * 0.7)]
    train = (train - train.mean(0)) / (train.std(0) + 1e-5)
    starts = range(len(train) - args.seq_len - args.pred_len + 1)
    x = torch.stack([train[s:s + args.seq_len] for s in starts])
    y = torch.stack([train[s + args.seq_len - args.label_len:s + args.seq_len + args.pred_len] for s in starts])

    exp = Exp_Basic(args)
    model = exp.model.train()
    optim = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    for epoch in range(args.train_epochs):
        losses = []
        for i in range(0, len(x), args.batch_size):
            bx, by = x[i:i + args.batch_size], y[i:i + args.batch_size]
            dec = torch.cat([by[:, :args.label_len], torch.zeros_like(by[:, args.label_len:])], dim=1)
            out = model(bx, None, dec, None)
            loss = torch.nn.functional.mse_loss(out, by[:, -args.pred_len:])
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        print(f"Epoch: {epoch + 1} | Train Loss: {np.mean(losses):.7f}")
