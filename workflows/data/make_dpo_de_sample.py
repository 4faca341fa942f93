#!/usr/bin/env python3
"""Writes dpo-de-sample.jsonl: German preference pairs written for flow.

Every pair is built from hand-written facts, phrases and answers below; the rejected answer is
worse in a way the `flaw` column names (wrong, evasive, rude, english, truncated, off_topic).
Deterministic: running it again gives the same file.

    python3 workflows/data/make_dpo_de_sample.py > workflows/data/dpo-de-sample.jsonl
"""

import json
import random

rng = random.Random(20261127)
rows = []
SYSTEM = "Du bist ein hilfreicher Assistent. Antworte auf Deutsch, korrekt und freundlich."


def add(category, prompt, chosen, rejected, flaw, system=None):
    row = {"id": f"de-{len(rows) + 1:04d}", "prompt": prompt, "chosen": chosen,
           "rejected": rejected, "category": category, "flaw": flaw}
    if system:
        row["system"] = system
    rows.append(row)


def truncate(text):
    words = text.split()
    return " ".join(words[: max(2, len(words) // 2)])


NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannah", "Jonas", "Lena",
         "Mia", "Noah", "Paul", "Sophie", "Tim", "Lukas"]
EVASIVE = ["Das weiß ich leider nicht.", "Dazu kann ich nichts sagen.",
           "Keine Ahnung, frag lieber jemand anderen.", "Das ist schwer zu sagen."]
RUDE = ["Das solltest du wirklich selbst wissen.", "Was für eine dumme Frage.",
        "Such es dir doch selbst heraus.", "Ich habe keine Lust, darauf zu antworten."]
OFF_TOPIC = ["Ich esse am liebsten Pizza mit viel Käse.", "Gestern hat es den ganzen Tag geregnet.",
             "Mein Lieblingstier ist die Katze.", "Fußball ist ein sehr beliebter Sport."]

# Knowledge: capitals (country, capital, English sentence).
CAPITALS = [
    ("Frankreich", "Paris", "France", "Paris"), ("Italien", "Rom", "Italy", "Rome"),
    ("Spanien", "Madrid", "Spain", "Madrid"), ("Österreich", "Wien", "Austria", "Vienna"),
    ("der Schweiz", "Bern", "Switzerland", "Bern"), ("Polen", "Warschau", "Poland", "Warsaw"),
    ("Tschechien", "Prag", "the Czech Republic", "Prague"), ("Ungarn", "Budapest", "Hungary", "Budapest"),
    ("Portugal", "Lissabon", "Portugal", "Lisbon"), ("Griechenland", "Athen", "Greece", "Athens"),
    ("Schweden", "Stockholm", "Sweden", "Stockholm"), ("Norwegen", "Oslo", "Norway", "Oslo"),
    ("Dänemark", "Kopenhagen", "Denmark", "Copenhagen"), ("Finnland", "Helsinki", "Finland", "Helsinki"),
    ("den Niederlanden", "Amsterdam", "the Netherlands", "Amsterdam"), ("Belgien", "Brüssel", "Belgium", "Brussels"),
    ("Irland", "Dublin", "Ireland", "Dublin"), ("Japan", "Tokio", "Japan", "Tokyo"),
    ("China", "Peking", "China", "Beijing"), ("Ägypten", "Kairo", "Egypt", "Cairo"),
    ("Kanada", "Ottawa", "Canada", "Ottawa"), ("Australien", "Canberra", "Australia", "Canberra"),
    ("Brasilien", "Brasília", "Brazil", "Brasília"), ("Argentinien", "Buenos Aires", "Argentina", "Buenos Aires"),
    ("Mexiko", "Mexiko-Stadt", "Mexico", "Mexico City"), ("Indien", "Neu-Delhi", "India", "New Delhi"),
    ("der Türkei", "Ankara", "Turkey", "Ankara"), ("Kenia", "Nairobi", "Kenya", "Nairobi"),
    ("Peru", "Lima", "Peru", "Lima"), ("Südkorea", "Seoul", "South Korea", "Seoul"),
]
for i, (country, capital, en_country, en_capital) in enumerate(CAPITALS):
    prompt = f"Was ist die Hauptstadt von {country}?"
    chosen = f"Die Hauptstadt von {country} ist {capital}."
    kind = ["wrong", "evasive", "english", "rude", "wrong", "off_topic"][i % 6]
    wrong_city = CAPITALS[(i + 7) % len(CAPITALS)][1]
    rejected = {
        "wrong": f"Die Hauptstadt von {country} ist {wrong_city}.",
        "evasive": EVASIVE[i % 4],
        "english": f"The capital of {en_country} is {en_capital}.",
        "rude": RUDE[i % 4],
        "off_topic": OFF_TOPIC[i % 4],
    }[kind]
    add("knowledge", prompt, chosen, rejected, kind, SYSTEM if i % 5 == 0 else None)

# Knowledge: chemical symbols.
ELEMENTS = [("Gold", "Au"), ("Silber", "Ag"), ("Eisen", "Fe"), ("Kupfer", "Cu"), ("Sauerstoff", "O"),
            ("Wasserstoff", "H"), ("Stickstoff", "N"), ("Kohlenstoff", "C"), ("Natrium", "Na"),
            ("Kalium", "K"), ("Blei", "Pb"), ("Zinn", "Sn"), ("Quecksilber", "Hg"), ("Helium", "He"),
            ("Calcium", "Ca"), ("Schwefel", "S"), ("Zink", "Zn"), ("Magnesium", "Mg")]
for i, (name, symbol) in enumerate(ELEMENTS):
    wrong = ELEMENTS[(i + 5) % len(ELEMENTS)][1]
    kind = ["wrong", "evasive", "truncated"][i % 3]
    chosen = f"Das chemische Symbol für {name} ist {symbol}."
    rejected = {"wrong": f"Das chemische Symbol für {name} ist {wrong}.",
                "evasive": EVASIVE[(i + 1) % 4],
                "truncated": f"Das chemische Symbol für"}[kind]
    add("knowledge", f"Welches chemische Symbol hat {name}?", chosen, rejected, kind)

# Knowledge: authors and works.
WORKS = [("Faust", "Johann Wolfgang von Goethe"), ("Die Räuber", "Friedrich Schiller"),
         ("Der Prozess", "Franz Kafka"), ("Die Blechtrommel", "Günter Grass"),
         ("Der Zauberberg", "Thomas Mann"), ("Nathan der Weise", "Gotthold Ephraim Lessing"),
         ("Effi Briest", "Theodor Fontane"), ("Der Steppenwolf", "Hermann Hesse"),
         ("Woyzeck", "Georg Büchner"), ("Die Verwandlung", "Franz Kafka"),
         ("Momo", "Michael Ende"), ("Emil und die Detektive", "Erich Kästner"),
         ("Der Besuch der alten Dame", "Friedrich Dürrenmatt"), ("Homo faber", "Max Frisch"),
         ("Das Parfum", "Patrick Süskind"), ("Buddenbrooks", "Thomas Mann")]
for i, (work, author) in enumerate(WORKS):
    wrong = WORKS[(i + 3) % len(WORKS)][1]
    if wrong == author:
        wrong = "Heinrich Heine"
    kind = ["wrong", "english", "rude", "wrong"][i % 4]
    chosen = f"„{work}“ wurde von {author} geschrieben."
    rejected = {"wrong": f"„{work}“ wurde von {wrong} geschrieben.",
                "english": f"\"{work}\" was written by {author}.",
                "rude": RUDE[(i + 2) % 4]}[kind]
    add("knowledge", f"Wer hat „{work}“ geschrieben?", chosen, rejected, kind)

# Knowledge: general facts (question, answer, wrong answer).
FACTS = [
    ("Wie viele Tage hat ein Schaltjahr?", "Ein Schaltjahr hat 366 Tage.", "Ein Schaltjahr hat 365 Tage."),
    ("Welcher Planet ist der Sonne am nächsten?", "Der Merkur ist der Sonne am nächsten.", "Der Mars ist der Sonne am nächsten."),
    ("Welcher ist der größte Planet unseres Sonnensystems?", "Der Jupiter ist der größte Planet unseres Sonnensystems.", "Die Erde ist der größte Planet unseres Sonnensystems."),
    ("Bei wie viel Grad Celsius kocht Wasser auf Meereshöhe?", "Auf Meereshöhe kocht Wasser bei 100 Grad Celsius.", "Wasser kocht immer bei 80 Grad Celsius."),
    ("Wie heißt der längste Fluss Deutschlands?", "Der längste Fluss, der durch Deutschland fließt, ist der Rhein.", "Der längste Fluss Deutschlands ist die Spree."),
    ("Wie heißt der höchste Berg Deutschlands?", "Der höchste Berg Deutschlands ist die Zugspitze mit rund 2962 Metern.", "Der höchste Berg Deutschlands ist der Brocken."),
    ("Wie viele Bundesländer hat Deutschland?", "Deutschland hat 16 Bundesländer.", "Deutschland hat 12 Bundesländer."),
    ("In welchem Jahr fiel die Berliner Mauer?", "Die Berliner Mauer fiel im Jahr 1989.", "Die Berliner Mauer fiel im Jahr 1975."),
    ("Wie viele Minuten hat eine Stunde?", "Eine Stunde hat 60 Minuten.", "Eine Stunde hat 100 Minuten."),
    ("Welches Gas brauchen Pflanzen für die Fotosynthese?", "Pflanzen nehmen für die Fotosynthese Kohlendioxid auf und geben Sauerstoff ab.", "Pflanzen brauchen für die Fotosynthese Helium."),
    ("Wer komponierte die „Mondscheinsonate“?", "Die „Mondscheinsonate“ stammt von Ludwig van Beethoven.", "Die „Mondscheinsonate“ stammt von Johann Strauss."),
    ("Wie viele Kontinente gibt es?", "Meist zählt man sieben Kontinente: Afrika, Antarktika, Asien, Australien, Europa, Nordamerika und Südamerika.", "Es gibt genau drei Kontinente."),
    ("Wie heißt die Währung in der Schweiz?", "In der Schweiz bezahlt man mit dem Schweizer Franken.", "In der Schweiz bezahlt man mit dem Euro."),
    ("Welches Tier ist das größte Säugetier der Erde?", "Der Blauwal ist das größte Säugetier der Erde.", "Der Elefant ist das größte Säugetier der Erde."),
    ("Wie viele Beine hat eine Spinne?", "Eine Spinne hat acht Beine.", "Eine Spinne hat sechs Beine."),
    ("Was ist die Quadratwurzel von 81?", "Die Quadratwurzel von 81 ist 9, denn 9 · 9 = 81.", "Die Quadratwurzel von 81 ist 8."),
]
for i, (prompt, answer, wrong) in enumerate(FACTS):
    kind = ["wrong", "wrong", "evasive", "english"][i % 4]
    rejected = {"wrong": wrong, "evasive": EVASIVE[(i + 2) % 4],
                "english": "I am not sure, maybe look it up online."}[kind]
    add("knowledge", prompt, answer, rejected, kind, SYSTEM if i % 3 == 0 else None)

# Reasoning: subtraction.
for i in range(14):
    name = NAMES[(i + 5) % len(NAMES)]
    money, spent = rng.randint(20, 90), rng.randint(3, 19)
    prompt = f"{name} hat {money} Euro und gibt {spent} Euro im Kino aus. Wie viel Geld bleibt übrig?"
    chosen = f"Es bleiben {money - spent} Euro übrig, denn {money} − {spent} = {money - spent}."
    kind = ["wrong", "rude"][i % 2]
    rejected = {"wrong": f"Es bleiben {money + spent} Euro übrig.", "rude": RUDE[(i + 3) % 4]}[kind]
    add("reasoning", prompt, chosen, rejected, kind)

# Reasoning: arithmetic word problems.
THINGS = [("Äpfel", "Äpfel"), ("Bücher", "Bücher"), ("Murmeln", "Murmeln"), ("Stifte", "Stifte"),
          ("Briefmarken", "Briefmarken"), ("Kekse", "Kekse")]
for i in range(24):
    name = NAMES[i % len(NAMES)]
    thing = THINGS[i % len(THINGS)][0]
    a, b = rng.randint(3, 40), rng.randint(2, 30)
    prompt = f"{name} hat {a} {thing} und bekommt {b} dazu. Wie viele {thing} hat {name} jetzt?"
    chosen = f"{name} hat jetzt {a + b} {thing}, denn {a} + {b} = {a + b}."
    kind = ["wrong", "truncated", "wrong", "evasive"][i % 4]
    rejected = {"wrong": f"{name} hat jetzt {a + b + rng.choice([-3, -1, 2, 5])} {thing}.",
                "truncated": f"{name} hat jetzt",
                "evasive": "Das kann man so nicht ausrechnen."}[kind]
    add("reasoning", prompt, chosen, rejected, kind)
for i in range(20):
    boxes, per = rng.randint(2, 9), rng.randint(3, 12)
    prompt = f"In einem Lager stehen {boxes} Kisten mit je {per} Flaschen. Wie viele Flaschen sind es insgesamt?"
    chosen = f"Es sind insgesamt {boxes * per} Flaschen, denn {boxes} · {per} = {boxes * per}."
    kind = ["wrong", "english", "wrong", "off_topic"][i % 4]
    rejected = {"wrong": f"Es sind insgesamt {boxes + per} Flaschen.",
                "english": f"There are {boxes * per} bottles in total.",
                "off_topic": OFF_TOPIC[i % 4]}[kind]
    add("reasoning", prompt, chosen, rejected, kind)
for i in range(16):
    speed, hours = rng.choice([40, 50, 60, 80, 90, 100, 120]), rng.randint(2, 5)
    prompt = f"Ein Zug fährt {hours} Stunden lang mit {speed} km/h. Wie weit kommt er?"
    chosen = f"Der Zug legt {speed * hours} Kilometer zurück, denn {speed} km/h · {hours} h = {speed * hours} km."
    kind = ["wrong", "evasive"][i % 2]
    rejected = {"wrong": f"Der Zug legt {speed + hours} Kilometer zurück.",
                "evasive": EVASIVE[i % 4]}[kind]
    add("reasoning", prompt, chosen, rejected, kind)
for i in range(12):
    price, percent = rng.choice([20, 40, 50, 80, 120, 200, 250]), rng.choice([10, 20, 25, 50])
    off = price * percent // 100
    prompt = f"Eine Jacke kostet {price} Euro und wird um {percent} Prozent reduziert. Was kostet sie jetzt?"
    chosen = f"Sie kostet jetzt {price - off} Euro: {percent} Prozent von {price} Euro sind {off} Euro, und {price} − {off} = {price - off}."
    kind = ["wrong", "truncated", "rude"][i % 3]
    rejected = {"wrong": f"Sie kostet jetzt {price - percent} Euro.",
                "truncated": f"Sie kostet jetzt",
                "rude": RUDE[i % 4]}[kind]
    add("reasoning", prompt, chosen, rejected, kind)

# Translation English → German.
PHRASES = [("Good morning.", "Guten Morgen."), ("Thank you very much.", "Vielen Dank."),
           ("Where is the train station?", "Wo ist der Bahnhof?"), ("I am hungry.", "Ich habe Hunger."),
           ("The weather is nice today.", "Das Wetter ist heute schön."),
           ("How much does this cost?", "Wie viel kostet das?"), ("I love reading books.", "Ich lese sehr gern Bücher."),
           ("See you tomorrow.", "Bis morgen."), ("My brother lives in Hamburg.", "Mein Bruder wohnt in Hamburg."),
           ("Can you help me?", "Kannst du mir helfen?"), ("The door is open.", "Die Tür ist offen."),
           ("We are going to the cinema tonight.", "Wir gehen heute Abend ins Kino."),
           ("The children are playing in the garden.", "Die Kinder spielen im Garten."),
           ("I don't understand.", "Ich verstehe das nicht."), ("Please speak slowly.", "Bitte sprich langsam."),
           ("The coffee is hot.", "Der Kaffee ist heiß."), ("What time is it?", "Wie spät ist es?"),
           ("I have two sisters.", "Ich habe zwei Schwestern."), ("The shop closes at eight.", "Der Laden schließt um acht."),
           ("Happy birthday!", "Alles Gute zum Geburtstag!"), ("I work in an office.", "Ich arbeite in einem Büro."),
           ("It is raining.", "Es regnet."), ("The book is on the table.", "Das Buch liegt auf dem Tisch."),
           ("She drinks tea every morning.", "Sie trinkt jeden Morgen Tee."),
           ("Where can I buy a ticket?", "Wo kann ich eine Fahrkarte kaufen?"),
           ("The museum is closed on Mondays.", "Das Museum ist montags geschlossen."),
           ("I would like a glass of water.", "Ich hätte gern ein Glas Wasser."),
           ("The bus is late.", "Der Bus hat Verspätung."), ("Our flat is small but cosy.", "Unsere Wohnung ist klein, aber gemütlich."),
           ("Have a nice weekend!", "Schönes Wochenende!"), ("The dog is sleeping.", "Der Hund schläft."),
           ("I am learning German.", "Ich lerne Deutsch."), ("Turn left at the corner.", "Biegen Sie an der Ecke links ab."),
           ("The soup tastes good.", "Die Suppe schmeckt gut."), ("We need more time.", "Wir brauchen mehr Zeit."),
           ("He is a doctor.", "Er ist Arzt.")]
for i, (en, de) in enumerate(PHRASES):
    prompt = f"Übersetze ins Deutsche: „{en}“"
    kind = ["english", "wrong", "off_topic", "truncated"][i % 4]
    wrong = PHRASES[(i + 9) % len(PHRASES)][1]
    rejected = {"english": en, "wrong": wrong, "off_topic": OFF_TOPIC[i % 4],
                "truncated": truncate(de) if len(de.split()) > 2 else "Das heißt"}[kind]
    add("translation", prompt, de, rejected, kind, SYSTEM if i % 6 == 0 else None)

# Instructions: word lengths, sorting, opposites, plurals, units.
WORDS = ["Haus", "Baum", "Sonne", "Fenster", "Schule", "Apfel", "Brücke", "Himmel", "Wolke", "Garten",
         "Straße", "Kirche", "Zeitung", "Blume", "Tisch", "Lampe"]
NUMBER_WORDS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn"]
for i, word in enumerate(WORDS):
    n = len(word)
    kind = ["wrong", "evasive"][i % 2]
    chosen = f"Das Wort „{word}“ hat {NUMBER_WORDS[n]} Buchstaben."
    rejected = {"wrong": f"Das Wort „{word}“ hat {NUMBER_WORDS[n + 1]} Buchstaben.",
                "evasive": "Buchstaben zu zählen ist nicht meine Aufgabe."}[kind]
    add("instructions", f"Wie viele Buchstaben hat das Wort „{word}“?", chosen, rejected, kind)
for i in range(18):
    numbers = rng.sample(range(1, 100), 5)
    ordered = sorted(numbers)
    text = ", ".join(map(str, numbers))
    chosen = "Aufsteigend sortiert: " + ", ".join(map(str, ordered)) + "."
    wrong = ordered[:]
    wrong[1], wrong[3] = wrong[3], wrong[1]
    kind = ["wrong", "truncated", "english"][i % 3]
    rejected = {"wrong": "Aufsteigend sortiert: " + ", ".join(map(str, wrong)) + ".",
                "truncated": "Aufsteigend sortiert: " + ", ".join(map(str, ordered[:2])),
                "english": "Sorted ascending: " + ", ".join(map(str, ordered)) + "."}[kind]
    add("instructions", f"Sortiere diese Zahlen aufsteigend: {text}.", chosen, rejected, kind)
OPPOSITES = [("heiß", "kalt"), ("groß", "klein"), ("hell", "dunkel"), ("schnell", "langsam"),
             ("laut", "leise"), ("alt", "jung"), ("voll", "leer"), ("schwer", "leicht"),
             ("früh", "spät"), ("teuer", "billig"), ("nass", "trocken"), ("stark", "schwach"),
             ("oben", "unten"), ("richtig", "falsch")]
for i, (word, opposite) in enumerate(OPPOSITES):
    kind = ["wrong", "rude", "english"][i % 3]
    wrong = OPPOSITES[(i + 4) % len(OPPOSITES)][1]
    rejected = {"wrong": f"Das Gegenteil von „{word}“ ist „{wrong}“.", "rude": RUDE[(i + 1) % 4],
                "english": f"The opposite of \"{word}\" is \"{opposite}\"."}[kind]
    add("instructions", f"Was ist das Gegenteil von „{word}“?",
        f"Das Gegenteil von „{word}“ ist „{opposite}“.", rejected, kind)
PLURALS = [("das Haus", "die Häuser"), ("der Baum", "die Bäume"), ("die Stadt", "die Städte"),
           ("das Kind", "die Kinder"), ("der Vogel", "die Vögel"), ("die Maus", "die Mäuse"),
           ("das Buch", "die Bücher"), ("der Stuhl", "die Stühle"), ("die Nacht", "die Nächte"),
           ("der Apfel", "die Äpfel"), ("das Auto", "die Autos"), ("die Frau", "die Frauen")]
for i, (singular, plural) in enumerate(PLURALS):
    noun = singular.split()[1]
    kind = ["wrong", "evasive", "truncated"][i % 3]
    rejected = {"wrong": f"Der Plural von „{singular}“ ist „die {noun}s“.", "evasive": EVASIVE[i % 4],
                "truncated": "Der Plural von"}[kind]
    add("instructions", f"Wie lautet der Plural von „{singular}“?",
        f"Der Plural von „{singular}“ ist „{plural}“.", rejected, kind)
for i in range(14):
    km = rng.randint(2, 25)
    kind = ["wrong", "english"][i % 2]
    rejected = {"wrong": f"{km} Kilometer sind {km * 100} Meter.",
                "english": f"{km} kilometres are {km * 1000} metres."}[kind]
    add("instructions", f"Wie viele Meter sind {km} Kilometer?",
        f"{km} Kilometer sind {km * 1000} Meter, denn ein Kilometer hat 1000 Meter.", rejected, kind)

# Advice and writing: hand-written answers.
ADVICE = [
    ("Wie kann ich abends besser einschlafen?",
     "Geh möglichst jeden Tag zur gleichen Zeit ins Bett, lege das Handy eine Stunde vorher weg und halte das Schlafzimmer kühl und dunkel. Auch ein kurzer Spaziergang am Abend kann helfen."),
    ("Wie lerne ich am besten Vokabeln?",
     "Lerne jeden Tag eine kleine Menge und wiederhole sie in wachsenden Abständen, zum Beispiel mit Karteikarten. Benutze neue Wörter gleich in eigenen Sätzen, dann bleiben sie besser hängen."),
    ("Was kann ich gegen Stress bei der Arbeit tun?",
     "Plane feste Pausen ein, erledige wichtige Aufgaben zuerst und sprich offen mit deinem Team, wenn es zu viel wird. Bewegung nach Feierabend hilft vielen Menschen, abzuschalten."),
    ("Wie spare ich Strom im Haushalt?",
     "Schalte Geräte ganz aus statt auf Stand-by, nutze LED-Lampen und wasche mit niedrigeren Temperaturen. Beim Kochen spart ein Deckel auf dem Topf deutlich Energie."),
    ("Wie bereite ich mich auf ein Vorstellungsgespräch vor?",
     "Informiere dich über das Unternehmen, übe Antworten auf typische Fragen laut und überlege dir eigene Fragen an die Firma. Plane die Anfahrt so, dass du pünktlich bist."),
    ("Wie halte ich meine Zimmerpflanzen gesund?",
     "Gieße erst, wenn die oberste Erdschicht trocken ist, stelle die Pflanzen passend zu ihrem Lichtbedarf auf und dünge im Frühling und Sommer sparsam."),
    ("Wie fange ich mit dem Laufen an?",
     "Beginne mit kurzen Einheiten, in denen du Gehen und langsames Laufen abwechselst, und steigere dich behutsam. Gute Laufschuhe und Ruhetage zwischen den Einheiten beugen Verletzungen vor."),
    ("Wie schreibe ich eine höfliche Absage per E-Mail?",
     "Bedanke dich zuerst für die Einladung oder das Angebot, sage dann klar und freundlich ab und wünsche zum Schluss alles Gute. Eine kurze Begründung ist nett, aber nicht nötig."),
    ("Was kann ich tun, wenn ich mich einsam fühle?",
     "Melde dich bei Freunden oder Familie, auch wenn es Überwindung kostet, und suche dir eine Gruppe mit einem gemeinsamen Hobby. Wenn das Gefühl lange anhält, kann ein Gespräch mit einer Beratungsstelle helfen."),
    ("Wie organisiere ich meinen Schreibtisch?",
     "Lass nur das auf dem Tisch, was du täglich brauchst, sortiere Unterlagen in beschriftete Ordner und räume am Ende jedes Tages fünf Minuten auf."),
    ("Wie koche ich Nudeln richtig?",
     "Bring reichlich Wasser zum Kochen, salze es kräftig und gib die Nudeln erst dann hinein. Rühre gelegentlich um und probiere kurz vor Ende der angegebenen Kochzeit, ob sie bissfest sind."),
    ("Wie kann ich mein Englisch verbessern?",
     "Höre oder lies jeden Tag etwas auf Englisch, das dich interessiert, und sprich so oft wie möglich, etwa in einem Tandem. Fehler gehören dazu und zeigen dir, woran du arbeiten kannst."),
    ("Was sollte in eine Reiseapotheke?",
     "Pflaster, Verbandsmaterial, ein Schmerzmittel, ein Mittel gegen Durchfall, Sonnenschutz und deine persönlichen Medikamente gehören hinein. Für Fernreisen lohnt sich eine Beratung in der Apotheke."),
    ("Wie bleibe ich beim Lernen konzentriert?",
     "Lege das Handy in einen anderen Raum, arbeite in Blöcken von etwa 25 Minuten mit kurzen Pausen und setze dir für jeden Block ein kleines, klares Ziel."),
    ("Wie spreche ich einen Konflikt mit einem Kollegen an?",
     "Such ein ruhiges Gespräch unter vier Augen, beschreibe die Situation sachlich aus deiner Sicht und frag nach seiner Sicht. Sucht dann gemeinsam nach einer Lösung, mit der beide leben können."),
    ("Wie plane ich einen Umzug?",
     "Miste vorher aus, besorge rechtzeitig Kartons und beschrifte sie nach Räumen. Kümmere dich früh um Helfer oder ein Umzugsunternehmen und melde deine neue Adresse bei den Ämtern an."),
]
for i, (prompt, answer) in enumerate(ADVICE):
    kind = ["rude", "off_topic", "english", "truncated"][i % 4]
    rejected = {"rude": RUDE[i % 4], "off_topic": OFF_TOPIC[(i + 1) % 4],
                "english": "Just try harder and it will work out somehow.",
                "truncated": truncate(answer)}[kind]
    add("advice", prompt, answer, rejected, kind, SYSTEM if i % 4 == 1 else None)

WRITING = [
    ("Schreibe einen Satz über den Herbst.", "Im Herbst färben sich die Blätter gelb und rot, und morgens liegt oft Nebel über den Feldern."),
    ("Schreibe einen Satz über das Meer.", "Das Meer rauscht gleichmäßig, während die Wellen langsam an den Strand rollen."),
    ("Schreibe eine kurze Einladung zu einem Grillabend.", "Liebe Nachbarn, am Samstag um 18 Uhr grillen wir im Hof – bringt gute Laune mit, für Essen ist gesorgt!"),
    ("Schreibe einen Satz, der einen Bahnhof beschreibt.", "Auf dem Bahnhof eilen Reisende mit Koffern zu den Gleisen, und aus den Lautsprechern klingen Durchsagen."),
    ("Formuliere einen freundlichen Gruß zum Wochenende.", "Ich wünsche dir ein erholsames Wochenende mit viel Sonne und Zeit für die Dinge, die dir Freude machen!"),
    ("Schreibe einen Satz über einen Wald im Winter.", "Im Winterwald ist es still, und der frische Schnee knirscht unter jedem Schritt."),
    ("Schreibe eine kurze Entschuldigung für eine verspätete Antwort.", "Entschuldige bitte, dass ich mich erst jetzt melde – die letzten Tage waren sehr voll."),
    ("Beschreibe in einem Satz eine Tasse Kaffee.", "Der Kaffee dampft in der Tasse und verbreitet einen kräftigen, warmen Duft."),
    ("Schreibe einen Satz über eine Stadt bei Nacht.", "Nachts leuchten die Fenster der Stadt wie kleine Laternen, und die Straßen werden ruhig."),
    ("Schreibe einen Dank an eine Lehrerin.", "Liebe Frau Weber, vielen Dank für Ihre Geduld und die vielen spannenden Stunden in diesem Schuljahr!"),
    ("Schreibe einen Satz über den Frühling.", "Im Frühling blühen die ersten Tulpen, und die Vögel singen schon früh am Morgen."),
    ("Schreibe einen kurzen Werbesatz für eine Bäckerei.", "Frisch aus dem Ofen: Bei uns gibt es jeden Morgen knuspriges Brot und warme Brötchen."),
    ("Beschreibe in einem Satz ein Gewitter.", "Dunkle Wolken ziehen auf, dann zucken Blitze über den Himmel, und der Donner grollt."),
    ("Schreibe einen Satz über eine Bibliothek.", "In der Bibliothek ist es angenehm ruhig, und zwischen den hohen Regalen riecht es nach Papier."),
]
for i, (prompt, answer) in enumerate(WRITING):
    kind = ["english", "off_topic", "truncated", "rude"][i % 4]
    rejected = {"english": "Here is a sentence: the weather is nice.", "off_topic": OFF_TOPIC[(i + 2) % 4],
                "truncated": truncate(answer), "rude": "Schreib deine Sätze doch selbst."}[kind]
    add("writing", prompt, answer, rejected, kind)

for row in rows:
    print(json.dumps(row, ensure_ascii=False))
