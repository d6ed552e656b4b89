"""The look-alike's ``print_args`` (tsattn's tests and demo; not upstream code): a few of the options, in sections."""


def print_args(args):
    print("\033[1m" + "Model Parameters" + "\033[0m")
    print(f'  {"Seq Len:":<20}{args.seq_len:<20}{"Pred Len:":<20}{args.pred_len:<20}')
    print(f'  {"d model:":<20}{args.d_model:<20}{"GPT Layers:":<20}{args.gpt_layers:<20}')
    print()
