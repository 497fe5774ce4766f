"""Distil a teacher into a student with any method registered in distiller_zoo/.

    python train_student.py --path_t save/teachers/models/resnet32x4_vanilla_cifar100_trial_0/resnet32x4_best.pth \
        --model_s resnet8x4 --distill METHOD [-r GAMMA -a ALPHA -b BETA]

Several methods (``--distill A,B,C``) or students (``--model_s resnet8x4,ShuffleV2``) train
as one pack: one teacher pass and one data stream per step, each run in its own folder exactly as
it would run alone (helper/pack.py).
"""

from helper.cli import exit_process, main
from helper.options import parse_student_pack

if __name__ == "__main__":
    exit_process(main(parse_student_pack, "student"))
