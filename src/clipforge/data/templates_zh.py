"""Chinese prompts and class names, so a user can type zero-shot labels in Chinese (AltCLIP / CLIP-Chinese style).

* ``ZH_TEMPLATES``, ``template_set("en" | "zh")``, ``is_chinese`` and ``templates_for(name)`` are re-exported
  from data/prompts.py, which holds the prompts and the one language rule (a class name with Chinese characters
  gets the zh set, any other name the en set) that every zero-shot path shares.
* Chinese class names of Fashion-MNIST, CIFAR-10 and CIFAR-100 in their label order (CIFAR-100: the
  ``fine_label_names`` order of the python-pickle ``meta`` file).
"""
from __future__ import annotations

from clipforge.errors import ConfigError
from clipforge.data.prompts import ZH_TEMPLATES, is_chinese, template_set, templates_for  # noqa: F401  (re-exported)

FASHION_MNIST_ZH = ["T恤", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "短靴"]

CIFAR10_ZH = ["飞机", "汽车", "鸟", "猫", "鹿", "狗", "青蛙", "马", "船", "卡车"]

CIFAR100_ZH = [
    "苹果", "水族馆鱼", "婴儿", "熊", "河狸", "床", "蜜蜂", "甲虫", "自行车", "瓶子",
    "碗", "男孩", "桥", "公共汽车", "蝴蝶", "骆驼", "易拉罐", "城堡", "毛毛虫", "牛",
    "椅子", "黑猩猩", "时钟", "云", "蟑螂", "沙发", "螃蟹", "鳄鱼", "杯子", "恐龙",
    "海豚", "大象", "比目鱼", "森林", "狐狸", "女孩", "仓鼠", "房子", "袋鼠", "键盘",
    "台灯", "割草机", "豹", "狮子", "蜥蜴", "龙虾", "男人", "枫树", "摩托车", "山",
    "老鼠", "蘑菇", "橡树", "橙子", "兰花", "水獭", "棕榈树", "梨", "皮卡车", "松树",
    "平原", "盘子", "罂粟花", "豪猪", "负鼠", "兔子", "浣熊", "鳐鱼", "道路", "火箭",
    "玫瑰", "大海", "海豹", "鲨鱼", "鼩鼱", "臭鼬", "摩天大楼", "蜗牛", "蛇", "蜘蛛",
    "松鼠", "有轨电车", "向日葵", "甜椒", "桌子", "坦克", "电话", "电视", "老虎", "拖拉机",
    "火车", "鳟鱼", "郁金香", "乌龟", "衣柜", "鲸鱼", "柳树", "狼", "女人", "蠕虫",
]

CLASS_NAMES_ZH = {"fashion-mnist": FASHION_MNIST_ZH, "cifar10": CIFAR10_ZH, "cifar100": CIFAR100_ZH}


def class_names_zh(dataset: str) -> list[str]:
    if dataset not in CLASS_NAMES_ZH:
        raise ConfigError(f"no Chinese class names for '{dataset}'; have: {sorted(CLASS_NAMES_ZH)}")
    return list(CLASS_NAMES_ZH[dataset])


__all__ = ["ZH_TEMPLATES", "CLASS_NAMES_ZH", "is_chinese", "template_set", "templates_for", "class_names_zh"]
