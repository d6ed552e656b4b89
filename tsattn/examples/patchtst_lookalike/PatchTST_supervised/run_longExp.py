# Look-alike of the training entry point (tsattn test fixture; not upstream code): argparse, then a small
# training loop over a CSV in the upstream format (a `date` column, then the variables).
import argparse
import csv
import os
import random

import numpy as np
import torch

from models import PatchTST


def load_windows(args):
    with open(os.path.join(args.root_path, args.data_path), newline='') as f:
        rows = list(csv.reader(f))
    data = np.array([[float(v) for v in row[1:]] for row in rows[1:]], dtype=np.float32)  # drop `date`
    n_train = int(len(data) * 0.7)
    mean, std = data[:n_train].mean(0), data[:n_train].std(0) + 1e-8
    data = (data - mean) / std
    span = args.seq_len + args.pred_len
    windows = np.stack([data[i:i + span] for i in range(len(data) - span + 1)])
    cut = max(1, int(len(windows) * 0.7))
    return torch.from_numpy(windows[:cut]), torch.from_numpy(windows[cut:])


def main(args):
    train, vali = load_windows(args)
    model = PatchTST.Model(args).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = torch.nn.MSELoss()
    for epoch in range(args.train_epochs):
        model.train()
        losses = []
        for i in range(0, len(train), args.batch_size):
            batch = train[i:i + args.batch_size]
            x, y = batch[:, :args.seq_len], batch[:, args.seq_len:]
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            vali_loss = loss_fn(model(vali[:, :args.seq_len]), vali[:, args.seq_len:]).item() if len(vali) else float('nan')
        print(f'Epoch: {epoch + 1} | Train Loss: {np.mean(losses):.7f} Vali Loss: {vali_loss:.7f}')
    os.makedirs(args.checkpoints, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.checkpoints, f'{args.model_id}_checkpoint.pth'))


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='look-alike long-term forecasting')
    parser.add_argument('--random_seed', type=int, default=2021, help='random seed')
    parser.add_argument('--is_training', type=int, required=True, default=1, help='status')
    parser.add_argument('--model_id', type=str, required=True, default='test', help='model id')
    parser.add_argument('--model', type=str, required=True, default='PatchTST', help='model name')
    parser.add_argument('--data', type=str, required=True, default='custom', help='dataset type')
    parser.add_argument('--root_path', type=str, default='./dataset/', help='root path of the data file')
    parser.add_argument('--data_path', type=str, default='data.csv', help='data file')
    parser.add_argument('--checkpoints', type=str, default='./checkpoints/', help='location of model checkpoints')
    parser.add_argument('--seq_len', type=int, default=96, help='input sequence length')
    parser.add_argument('--pred_len', type=int, default=24, help='prediction sequence length')

    # PatchTST
    parser.add_argument('--fc_dropout', type=float, default=0.05, help='fully connected dropout')
    parser.add_argument('--head_dropout', type=float, default=0.0, help='head dropout')
    parser.add_argument('--patch_len', type=int, default=16, help='patch length')
    parser.add_argument('--stride', type=int, default=8, help='stride')
    parser.add_argument('--padding_patch', default='end', help='None: None; end: padding on the end')
    parser.add_argument('--revin', type=int, default=1, help='RevIN; True 1 False 0')
    parser.add_argument('--decomposition', type=int, default=0, help='decomposition; True 1 False 0')
    parser.add_argument('--kernel_size', type=int, default=25, help='decomposition-kernel')
    parser.add_argument('--individual', type=int, default=0, help='individual head; True 1 False 0')

    # Formers
    parser.add_argument('--enc_in', type=int, default=7, help='encoder input size')
    parser.add_argument('--d_model', type=int, default=16, help='dimension of model')
    parser.add_argument('--n_heads', type=int, default=4, help='num of heads')
    parser.add_argument('--e_layers', type=int, default=2, help='num of encoder layers')
    parser.add_argument('--d_ff', type=int, default=32, help='dimension of fcn')
    parser.add_argument('--dropout', type=float, default=0.05, help='dropout')

    # optimization
    parser.add_argument('--train_epochs', type=int, default=10, help='train epochs')
    parser.add_argument('--batch_size', type=int, default=32, help='batch size of train input data')
    parser.add_argument('--learning_rate', type=float, default=0.0001, help='optimizer learning rate')

    args = parser.parse_args()
    random.seed(args.random_seed)
    torch.manual_seed(args.random_seed)
    np.random.seed(args.random_seed)
    print('Args in experiment:')
    print(args)
    main(args)
