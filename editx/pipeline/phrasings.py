"""The phrase table of plain-words instructions: names, synonyms and common phrasings → upstream edits.

Each English entry also matches its usual inflections (cheerful → cheerfully, happy → happily, gentle →
gently, laugh → laughing/laughs/laughed), whole words only. Chinese entries match as substrings.
editx.pipeline.instructions reads this table; GET /v1/edits shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# value → (English phrasings, Chinese phrasings); the value itself always counts as a phrasing.
EMOTIONS = {
    "happy": ("happy cheerful cheery joyful glad upbeat delighted jolly smiling merry", "开心 高兴 快乐 愉快 欢快 喜悦"),
    "angry": ("angry mad furious annoyed irritated irate enraged cross", "生气 愤怒 恼火 发火 气愤"),
    "sad": ("sad sorrowful unhappy melancholy mournful gloomy tearful heartbroken", "悲伤 难过 伤心 忧伤 哀伤"),
    "humour": ("humour humor humorous funny playful witty comic comedic joking jokey", "幽默 搞笑 风趣 诙谐"),
    "confusion": ("confused puzzled confusion bewildered perplexed baffled", "困惑 疑惑 迷惑 不解"),
    "disgusted": ("disgusted disgust revolted grossed-out repulsed", "厌恶 恶心 嫌弃"),
    "empathy": ("empathy empathetic empathic sympathetic compassionate caring understanding", "同情 共情 体贴 感同身受"),
    "embarrass": ("embarrassed embarrass awkward sheepish flustered", "尴尬 难为情"),
    "fear": ("fear afraid scared fearful frightened terrified nervous anxious", "害怕 恐惧 惊恐 紧张 担心"),
    "surprised": ("surprised astonished amazed shocked stunned", "惊讶 吃惊 震惊 意外"),
    "excited": ("excited thrilled enthusiastic energetic eager pumped", "兴奋 激动 热情"),
    "depressed": ("depressed dejected despondent hopeless downcast miserable", "沮丧 抑郁 消沉 低落"),
    "coldness": ("coldness cold icy aloof detached indifferent distant unfriendly", "冷漠 冷淡 冷冰冰 高冷"),
    "admiration": ("admiration admiring impressed awed reverent in-awe", "钦佩 崇拜 赞叹 敬佩 仰慕"),
    "remove": ("neutral emotionless no-emotion without-emotion monotone flat unemotional",
               "没有感情 不带感情 平淡 中性 去掉情绪"),
}
STYLES = {
    "serious": ("serious stern grave solemn formal", "严肃 正经 庄重"),
    "arrogant": ("arrogant smug haughty condescending cocky snobbish", "傲慢 高傲 自大 嚣张"),
    "child": ("child childlike childish kid like-a-child little-kid", "孩子 小孩 童声 儿童"),
    "older": ("older old elderly aged like-an-old-man like-an-old-woman grandpa grandma", "老人 年长 老年 苍老"),
    "girl": ("girl girly girlish young-girl", "少女 女孩 小姑娘"),
    "pure": ("pure innocent naive", "纯真 清纯 天真"),
    "sister": ("sister big-sister older-sister", "姐姐 御姐 大姐姐"),
    "sweet": ("sweet cute adorable", "甜美 可爱 甜甜"),
    "ethereal": ("ethereal dreamy airy otherworldly angelic", "空灵 飘渺 梦幻"),
    "whisper": ("whisper hushed under-your-breath quietly", "耳语 悄悄 低语 小声 轻声"),
    "gentle": ("gentle soft tender mild calm", "温柔 轻柔 柔和"),
    "recite": ("recite recitation poetic declaim read-aloud", "朗诵 朗读 背诵"),
    "generous": ("generous magnanimous open-hearted bighearted", "大方 慷慨 豪爽"),
    "act_coy": ("act-coy coy coquettish flirty flirtatious pouty", "撒娇 卖萌 嗲"),
    "warm": ("warm friendly cozy kind", "温暖 亲切 暖心"),
    "shy": ("shy timid bashful meek", "害羞 腼腆 羞涩"),
    "comfort": ("comfort comforting soothing reassuring consoling", "安慰 安抚 抚慰"),
    "authority": ("authority authoritative commanding assertive confident firm", "权威 威严 命令"),
    "chat": ("chat chatty casual conversational informal relaxed", "聊天 闲聊 随意 口语"),
    "radio": ("radio radio-host broadcast dj", "电台 播音"),
    "soulful": ("soulful heartfelt passionate moving", "深情 动情 走心"),
    "story": ("story storytelling storyteller narrate narrator bedtime-story", "讲故事 故事 说书"),
    "vivid": ("vivid lively animated expressive", "生动 活泼 绘声绘色"),
    "program": ("program programme tv-host presenter show-host host", "节目 主持"),
    "news": ("news newscaster news-anchor anchor newsreader reporter", "新闻 播报"),
    "advertising": ("advertising advert advertisement commercial sales-pitch salesy infomercial", "广告 推销"),
    "roar": ("roar growl bellow", "咆哮 怒吼 吼"),
    "murmur": ("murmur mumble mutter", "喃喃 嘟囔 呢喃 嘀咕"),
    "shout": ("shout yell scream", "大喊 喊叫 呐喊 喊"),
    "deeply": ("deeply deep deep-voice low-voice profound", "深沉 低沉 浑厚"),
    "loudly": ("loudly loud louder", "大声 响亮 洪亮"),
    "exaggerated": ("exaggerated over-the-top theatrical dramatic hammy", "夸张 浮夸"),
    "remove": ("no-style plain-style normal-style natural-style without-style", "去掉风格 正常风格"),
}
SPEEDS = {
    "faster": ("faster fast quick quicker quickly speed-up hurry rapid rapidly brisk briskly", "快一点 快点 加快 更快 语速快 快速 快些"),
    "slower": ("slower slow slowly slow-down unhurried leisurely take-your-time", "慢一点 慢点 放慢 更慢 语速慢 慢慢 慢些"),
    "more faster": ("much-faster a-lot-faster way-faster even-faster", "快很多 再快一点 快得多"),
    "more slower": ("much-slower a-lot-slower way-slower even-slower", "慢很多 再慢一点 慢得多"),
}
TAGS = {
    "[Laughter]": ("laugh laughter chuckle giggle", "笑声 大笑 笑一下 笑"),
    "[Breathing]": ("breath breathe breathing breathy gasp pant", "呼吸 喘气 吸气"),
    "[Sigh]": ("sigh", "叹气 叹息 唉"),
    "[Uhm]": ("uhm um umm hesitate hesitation hesitant filler", "嗯 犹豫"),
    "[Surprise-oh]": ("say-oh an-oh", "哦"),
    "[Surprise-ah]": ("say-ah an-ah", "啊"),
    "[Surprise-wa]": ("wow say-wow", "哇"),
    "[Confirmation-en]": ("mm-hmm uh-huh agreeing confirm", "嗯嗯 确认"),
    "[Question-ei]": ("say-eh questioning", "诶 欸"),
    "[Dissatisfaction-hnn]": ("hmph huff dissatisfied displeased", "哼 不满"),
}
OTHER = {("denoise", None): ("denoise remove-noise clean-up-the-audio noise-free less-noise", "降噪 去噪 去除噪音"),
         ("vad", None): ("remove-silence trim-silence cut-the-pauses remove-pauses no-pauses", "去掉静音 去除停顿 删除静音")}

# (word, rounds): the word just before a phrase sets how many times the edit is applied.
EN_INTENSITY = (("extremely", 3), ("incredibly", 3), ("super", 3), ("very very", 3), ("totally", 3),
                ("very", 2), ("really", 2), ("so", 2), ("much", 2), ("extra", 2), ("quite", 2), ("more", 2),
                ("a lot", 2), ("slightly", 1), ("a bit", 1), ("a little", 1), ("somewhat", 1), ("a touch", 1),
                ("a tad", 1), ("mildly", 1), ("bit", 1), ("little", 1))
ZH_INTENSITY = (("极其", 3), ("超级", 3), ("极度", 3), ("非常", 2), ("特别", 2), ("十分", 2), ("很", 2),
                ("更加", 2), ("稍微", 1), ("有点", 1), ("一点", 1), ("略微", 1), ("略", 1))


@dataclass(frozen=True)
class Phrase:
    words: str  # as shown to users
    edit_type: str
    info: str | None
    tag: str | None = None
    pattern: re.Pattern = field(compare=False, default=None)  # type: ignore[assignment]


def _forms(word: str) -> set[str]:
    """A word and its usual English inflections (over-generation is harmless: whole words only)."""
    forms = {word, word + "ly", word + "s", word + "ed", word + "ing", word + "ally"}
    if word.endswith("y"):
        forms |= {word[:-1] + "ily", word[:-1] + "ied", word[:-1] + "ies"}
    if word.endswith("le"):
        forms.add(word[:-1] + "y")  # gentle → gently
    if word.endswith("e"):
        forms |= {word[:-1] + "ing", word + "d"}
    if word[-1] in "tgdp" and len(word) > 2 and word[-2] in "aeiou" and word[-3] not in "aeiou":
        forms |= {word + word[-1] + "ing", word + word[-1] + "ed"}  # chat → chatting
    return forms


def _english(words: str) -> re.Pattern:
    parts = words.split("-") if "-" in words and words not in ("act-coy", "grossed-out", "mm-hmm", "uh-huh") else [words]
    if len(parts) == 1:
        alts = sorted(_forms(words.replace("-", " ")) if words.isalpha() else {words.replace("-", "-?")}, key=len,
                      reverse=True)
        return re.compile(r"\b(?:" + "|".join(re.escape(a).replace(r"\-\?", "-?") for a in alts) + r")\b")
    *head, last = parts
    lasts = sorted(_forms(last), key=len, reverse=True)
    return re.compile(r"\b" + r"\s+".join(re.escape(h) for h in head) + r"\s+(?:" + "|".join(map(re.escape, lasts)) +
                      r")\b")


def _table() -> tuple[Phrase, ...]:
    rows: list[tuple[str, str, str | None, str | None]] = []
    groups = [("emotion", EMOTIONS), ("style", STYLES), ("speed", SPEEDS)]
    for kind, table in groups:
        for info, (en, zh) in table.items():
            rows += [(w, kind, info, None) for w in dict.fromkeys(en.split() + ([info] if info != "remove" else []))]
            rows += [(w, kind, info, None) for w in zh.split()]
    for tag, (en, zh) in TAGS.items():
        rows += [(w, "paralinguistic", None, tag) for w in en.split() + zh.split()]
    for (kind, info), (en, zh) in OTHER.items():
        rows += [(w, kind, info, None) for w in en.split() + zh.split()]
    phrases = []
    for words, kind, info, tag in rows:
        cjk = bool(re.search(r"[\u4e00-\u9fff]", words))
        pattern = re.compile(re.escape(words)) if cjk else _english(words)
        shown = words if cjk or words in ("act-coy", "grossed-out", "mm-hmm", "uh-huh") else words.replace("-", " ")
        phrases.append(Phrase(shown.replace("_", " "), kind, info, tag, pattern))
    # longest first, so "slow down" wins over "slow" and "much faster" over "faster"
    return tuple(sorted(phrases, key=lambda p: -len(p.words)))


PHRASES = _table()
EN_INTENSITY = tuple(sorted(EN_INTENSITY, key=lambda w: -len(w[0])))
